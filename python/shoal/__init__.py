"""shoal: parallel processing for Python on a C++ engine.

Process pools that are drop-in replacements for ``multiprocessing.Pool`` and
``concurrent.futures.ProcessPoolExecutor``, and process-shared primitives
(locks, semaphores, events, barriers, queues) that live in shared memory.
"""
from ._core import SharedSegment

__all__ = ["SharedSegment"]
__version__ = "0.1.0"
