"""The debug mode: every task runs inline in the caller, with the pools' API.

``start_method="inline"`` or ``SHOAL_SERIAL=1`` select it.
Nothing is pickled and no process is started, so breakpoints, pdb and
profilers see the task code directly; exceptions keep their real tracebacks.
Per-task time and memory limits and retries do not apply here.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..obs.snapshot import PoolSnapshot
from ..wire.payload import FrozenItem, thaw
from ..wire.protocol import CALL, MAP_STAR
from .outcome import INLINE_ERROR, INLINE_OK, Handler, Payload
from .options import PoolOptions

if TYPE_CHECKING:
    from ..wire.payload import BufferMemo
    from .interface import PoolRuntime, Task


class SerialRuntime:
    workers = 1
    inline_payload_limit = sys.maxsize  # nothing travels: chunks are the lists themselves
    default_chunksize: Optional[int] = 64  # no task time to measure: every chunk runs at once, inline

    def __init__(self, options: PoolOptions) -> None:
        self._job_ids = itertools.count(1)
        self._closed = False
        self._surface = options.surface
        self._created = time.time()
        self._started = time.monotonic()
        self._submitted = 0
        if options.trace or options.metrics_port is not None or options.dashboard:
            logging.getLogger("shoal").warning(
                "shoal: trace=, metrics_port= and dashboard= do nothing in the serial mode (no workers to watch)"
            )
        if options.initializer is not None:
            options.initializer(*options.initargs)  # once, as in each worker

    def _function_id(self, fn: Callable[..., Any]) -> int:
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")  # as calling it says
        return 0

    def prepare(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        self._function_id(fn)
        return fn

    @staticmethod
    def forget(prepared: Task) -> None:
        pass  # nothing was copied

    def check_usable(self) -> None:
        pass

    @staticmethod
    def pack_chunk(chunk: list[Any], inband: bool = False, memo: Optional[BufferMemo] = None) -> list[Any]:
        # The items of a lazy input as they were read (what a worker would get).
        return [thaw(item) if type(item) is FrozenItem else item for item in chunk]

    def submit(
        self, fn: Task, tag: int, payload: Payload, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        call: Callable[..., Any] = fn  # type: ignore[assignment]  # what prepare() gave: here, fn itself
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        job_id = next(self._job_ids)
        self._submitted = job_id
        if tag == CALL:
            args, kwargs = payload
            try:
                result = call(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - delivered like a worker's exception
                handler(INLINE_ERROR, 0, exc)
            else:
                handler(INLINE_OK, 0, result)
            return job_id
        results: list[Any] = []
        failures: dict[int, BaseException] = {}
        for index, item in enumerate(payload):
            try:
                results.append(call(*item) if tag == MAP_STAR else call(item))
            except Exception as exc:  # noqa: BLE001
                results.append(None)
                failures[index] = exc
        handler(INLINE_OK, 0, (results, failures))
        return job_id

    def submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Handler,
        retries: int = 0,
        timeout: Optional[float] = None,
    ) -> int:
        return self.submit(fn, CALL, (args, kwargs), handler, retries, timeout)

    def cancel(self, job_id: int) -> bool:
        return False  # every job has already run

    def queued(self, job_id: int) -> bool:
        return False

    def take_job(self, job_id: int, timeout: Optional[float]) -> bool:
        return True  # every job ran inside submit()

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        self._closed = True

    def terminate(self) -> None:
        self._closed = True

    at_exit = terminate

    def worker_pids(self) -> list[int]:
        return []

    dashboard_url: Optional[str] = None  # no workers, no stats block: nothing to watch
    metrics_url: Optional[str] = None

    def stats(self) -> PoolSnapshot:
        """Jobs only: no workers, no stats block (nothing to read from elsewhere)."""
        return PoolSnapshot(
            name="", pid=os.getpid(), kind=self._surface, label="serial", state="closed" if self._closed else "running",
            workers=0, created=self._created, uptime_s=time.monotonic() - self._started,
            submitted=self._submitted, completed=self._submitted, failed=0, cancelled=0, retried=0, timed_out=0,
            workers_started=0, workers_lost=0, pending=0, in_flight=0,
            arena_used_bytes=0, arena_peak_bytes=0, arena_limit_bytes=0, taken_at=time.monotonic(),
        )


def make_runtime(options: PoolOptions) -> PoolRuntime:
    """The serial runtime for ``start_method="inline"`` or ``SHOAL_SERIAL=1``, else worker processes."""
    from .engine import Runtime

    return SerialRuntime(options) if options.inline else Runtime(options)
