"""What a pool starts so that it can be watched, and stops when its engine does:
its own trace (``trace=``), Prometheus /metrics (``metrics_port=``) and the
live web page (``dashboard=True``); and its place in a ``shoal.trace()``
that is recording when it starts.

The servers read the stats blocks of this process's pools from shared memory
(shoal.obs), so they show every pool of the process, not only this one; they
bind 127.0.0.1.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Optional

from ..obs import trace as tracing
from .options import PoolOptions

if TYPE_CHECKING:
    from .. import _core

log = logging.getLogger("shoal")


class _SharedMetrics:
    """One /metrics server per port in this process: it serves every pool of
    the process anyway, so pools asking for the same port share it (the last
    one to stop closes it)."""

    _lock = threading.Lock()
    _by_port: dict[int, "_SharedMetrics"] = {}

    def __init__(self, port: int) -> None:
        from ..obs.metrics import serve_metrics

        self.server = serve_metrics(port=port, pid=os.getpid())
        self.port, self.users = port, 0
        log.info("shoal: Prometheus metrics on %s", self.server.url)

    @classmethod
    def acquire(cls, port: int) -> "_SharedMetrics":
        with cls._lock:
            shared = cls._by_port.get(port) if port else None
            if shared is None:
                shared = cls(port)
                if port:
                    cls._by_port[port] = shared
            shared.users += 1
            return shared

    def close(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._by_port.get(self.port) is self:
                del self._by_port[self.port]
        self.server.close()


class PoolMonitoring:
    """A pool's trace and servers, started before its engine (a port in use
    fails the pool's construction, with nothing left running) and attached to
    the engine once it exists."""

    def __init__(self, options: PoolOptions) -> None:
        self.trace = tracing.Trace(options.trace) if options.trace else None
        self._servers: list[Any] = []
        self.dashboard_url: Optional[str] = None
        self.metrics_url: Optional[str] = None
        try:
            if options.metrics_port is not None:
                metrics = _SharedMetrics.acquire(options.metrics_port)
                self._servers.append(metrics)
                self.metrics_url = metrics.server.url
            if options.dashboard:
                from ..obs.dashboard import serve_dashboard

                dash = serve_dashboard(port=0, pid=os.getpid())
                self._servers.append(dash)
                self.dashboard_url = dash.url
                log.info("shoal: dashboard on %s", dash.url)
            if self.trace is not None:
                self.trace.start()
        except BaseException:
            self.close()
            raise

    def attach(self, engine: "_core.Engine") -> None:
        # A pool traced by its own trace= is left out of a shoal.trace()
        # (a pool's rings have one reader).
        if self.trace is not None:
            self.trace.add(engine)
            return
        recording = tracing.recording()
        if recording is not None:
            recording.add(engine)

    def close(self) -> None:
        """The engine stopped: the trace file is written, the servers stop."""
        trace, self.trace = self.trace, None
        servers, self._servers = self._servers, []
        if trace is not None:
            try:
                trace.stop()
            except Exception:  # noqa: BLE001 - the pool's end must not fail for its trace
                log.exception("shoal could not write the trace %s", trace.path)
        for server in servers:
            try:
                server.close()
            except Exception:  # noqa: BLE001
                log.exception("shoal could not stop %r", server)
