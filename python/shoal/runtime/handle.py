"""What every result handle shares: Future, AsyncResult and the map feeds.

A handle names the engine job that will produce its result. A thread that
waits on the handle does not sleep until the pool's result thread delivers:
it asks the engine for that job itself (``Runtime.take_job``), so the
result goes from the worker's outbox to the waiting thread with no hop
through the result thread. Whichever thread takes the job first runs its
handler; the other finds it done.
"""
from __future__ import annotations

import time

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .interface import PoolRuntime


class JobHandle:
    """A result handle bound to one engine job (job id 0: none, e.g. an argument
    that could not be pickled failed the handle before any job existed)."""

    # Class defaults: a handle costs no instance attribute until it is bound.
    if TYPE_CHECKING:
        _runtime: PoolRuntime  # None until bound, and read only once _job_id is set
    else:
        _runtime = None
    _job_id: int = 0

    def _bind(self, runtime: PoolRuntime, job_id: int) -> None:
        self._runtime, self._job_id = runtime, job_id

    def _take_result(self, timeout: Optional[float]) -> Optional[float]:
        """Waits for the job in this thread (running its handler here if the
        result is not taken yet); returns what is left of ``timeout``."""
        if not self._job_id:
            return timeout
        if timeout is None:  # result() with no timeout: the common case, without clock reads
            self._runtime.take_job(self._job_id, None)
            return None
        deadline = time.monotonic() + timeout
        self._runtime.take_job(self._job_id, timeout)
        return max(0.0, deadline - time.monotonic())
