"""shoal: parallel processing for Python on a C++ engine.

Process pools that are drop-in replacements for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, and process-shared primitives
(locks, semaphores, events, barriers, queues) that live in shared memory.
"""
from ._core import SharedSegment
from . import _oob  # noqa: F401 - first: its exit hook must run after the pools stop
from ._worker import worker_id
from .errors import BrokenPoolError, MemoryLimitError, RemoteError, RemoteTraceback, TransferError, WorkerLostError
from .executor import Executor
from .pool import AsyncResult, Pool
from .queues import Queue
from .sync import (
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
    "share",
    "worker_id",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # SharedArray needs numpy; importing it lazily keeps `import shoal` (and so
    # every fresh worker interpreter) fast for code that never uses it.
    if name in ("SharedArray", "share"):
        from . import shared

        return getattr(shared, name)
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
