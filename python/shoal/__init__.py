"""shoal: parallel processing for Python on a C++ engine.

Process pools that are drop-in replacements for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, and process-shared primitives
(locks, semaphores, events, barriers, queues) that live in shared memory.
"""
from ._core import SharedSegment
from ._worker import worker_id
from .errors import BrokenPoolError, RemoteError, RemoteTraceback, WorkerLostError
from .executor import Executor
from .pool import AsyncResult, Pool

__all__ = [
    "AsyncResult",
    "Pool",
    "BrokenPoolError",
    "Executor",
    "RemoteError",
    "RemoteTraceback",
    "SharedSegment",
    "WorkerLostError",
    "worker_id",
]
__version__ = "0.1.0"
