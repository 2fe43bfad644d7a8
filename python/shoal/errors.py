"""Exceptions that shoal raises, and how a task's exception travels home."""
from __future__ import annotations

from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Optional

__all__ = ["WorkerLostError", "MemoryLimitError", "RemoteError", "RemoteTraceback", "BrokenPoolError", "TransferError"]


class WorkerLostError(BrokenProcessPool):
    """The worker process running a task died (signal, ``os._exit``, OOM killer).

    The message names the worker, its pid and how it ended. Only that task
    fails: the pool replaces the worker and goes on. A ``BrokenProcessPool``
    (so ``except BrokenProcessPool`` catches it, as with ProcessPoolExecutor).
    Pass ``retries=N`` to re-run such tasks on a fresh worker instead.
    """


class TransferError(BrokenProcessPool):
    """A task's arguments could not be unpickled in the worker, or its result
    could not be unpickled in the caller. The original error is ``__cause__``;
    only this task fails and the pool goes on (ProcessPoolExecutor would break)."""

    def __init__(self, message: str, original: Optional[BaseException] = None) -> None:
        super().__init__(message)
        self.original = original

    def __reduce__(self) -> tuple[type[TransferError], tuple[str, Optional[BaseException]]]:
        return type(self), (self.args[0], self.original)


class MemoryLimitError(MemoryError):
    """A task drove its worker past ``max_memory_per_worker``; the worker was killed and replaced."""


class BrokenPoolError(BrokenExecutor):
    """The pool cannot run tasks: its initializer failed, or workers cannot start."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker.

    It is attached as ``__cause__`` of the re-raised exception, so the worker's
    failing line shows up in the caller's traceback.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class RemoteError(Exception):
    """An exception from a worker that could not be pickled back.

    ``type_name``, ``message`` and ``traceback`` describe the original.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return type(self), (self.type_name, self.message, self.traceback)
