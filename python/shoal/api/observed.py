"""What both pool surfaces show of their pool, the same way: its workers'
pids, its stats snapshot and insights, and where its dashboard and metrics
are served (docs/observability.md)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..obs.insights import Insights
from ..obs.snapshot import PoolSnapshot

if TYPE_CHECKING:
    from ..runtime.core import PoolCore


class ObservedPool:
    """Executor's and Pool's views of their PoolCore."""

    _core: PoolCore

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers."""
        return self._core.worker_pids()

    @property
    def dashboard_url(self) -> Optional[str]:
        """The live web page's address (with its access token) if the pool
        was made with ``dashboard=True``; else None."""
        return self._core.runtime.dashboard_url

    @property
    def metrics_url(self) -> Optional[str]:
        """Where Prometheus scrapes this process's pools if the pool was made
        with ``metrics_port=`` (``http://127.0.0.1:<port>/metrics``); else None."""
        return self._core.runtime.metrics_url

    def stats(self) -> PoolSnapshot:
        """A snapshot of the pool's stats block (:class:`shoal.obs.PoolSnapshot`):
        jobs submitted, completed, failed, cancelled and retried; workers
        started and lost; queue depth; arena use; and per worker its state,
        running job, time split into work and (de)serialisation, a task
        duration histogram, its slowest tasks and recent errors. See
        docs/observability.md."""
        return self._core.stats()

    def insights(self) -> Insights:
        """A summary a person reads (print it): per worker the share of time
        working, waiting and (de)serialising, start-up time; task duration
        percentiles; the slowest tasks with their arguments; restarts and
        their causes; hints when tasks are too small or the load is uneven."""
        return Insights(self._core.stats())
