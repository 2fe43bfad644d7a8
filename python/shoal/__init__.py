"""shoal: parallel processing for Python on a C++ engine.

Process pools that are drop-in replacements for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, and process-shared primitives
(locks, semaphores, events, barriers, queues) that live in shared memory.
"""
from typing import TYPE_CHECKING

from ._core import SharedSegment
from .shm import arena as _arena  # noqa: F401 - first: its exit hook must run after the pools stop
from .worker.loop import worker_id
from .errors import BrokenPoolError, MemoryLimitError, RemoteError, RemoteTraceback, TransferError, WorkerLostError
from .api.executor import Executor
from .api.pool import AsyncResult, Pool
from .shm.queue import Queue
from .obs.trace import trace
from .shm.sync import (
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    LockNotOwnedError,
    OwnerDiedWarning,
    RLock,
    Semaphore,
)

if TYPE_CHECKING:  # imported on first use at run time (below): they need numpy, prometheus-client
    from .obs.metrics import serve_metrics
    from .shm.shared_array import SharedArray, share

__all__ = [
    "AsyncResult",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "LockNotOwnedError",
    "MemoryLimitError",
    "OwnerDiedWarning",
    "Pool",
    "Queue",
    "RLock",
    "Semaphore",
    "BrokenPoolError",
    "Executor",
    "RemoteError",
    "RemoteTraceback",
    "SharedArray",
    "SharedSegment",
    "TransferError",
    "WorkerLostError",
    "serve_metrics",
    "share",
    "trace",
    "worker_id",
]
__version__ = "0.1.0"


if not TYPE_CHECKING:  # type checkers see the names above, not a module that answers any name

    def __getattr__(name: str) -> object:
        # SharedArray needs numpy; importing it lazily keeps `import shoal` (and so
        # every fresh worker interpreter) fast for code that never uses it.
        if name in ("SharedArray", "share"):
            from .shm import shared_array

            return getattr(shared_array, name)
        if name == "serve_metrics":
            from .obs.metrics import serve_metrics

            return serve_metrics
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
