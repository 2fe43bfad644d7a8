"""shoal: parallel processing for Python on a C++ engine.

Process pools that are drop-in replacements for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, and process-shared primitives
(locks, semaphores, events, barriers, queues) that live in shared memory.
"""
from ._core import SharedSegment
from .shared import SharedArray, share  # first: its exit hook must run after the pools stop
from ._worker import worker_id
from .errors import BrokenPoolError, MemoryLimitError, RemoteError, RemoteTraceback, WorkerLostError
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
    "WorkerLostError",
    "share",
    "worker_id",
]
__version__ = "0.1.0"
