"""A pool's life as the process around it changes: interpreter exit, fork(), SIGTERM.

Every live pool core (Runtime) registers here. At interpreter exit they stop
before Python tears its threads down; in a child forked from a pool's process
every pool goes inert (it would take the parent's results); where SIGTERM would
kill the process silently, the pools stop and this process's shared-memory
names are removed first.
"""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import TYPE_CHECKING, NoReturn, Optional

if TYPE_CHECKING:
    from types import FrameType

    from .. import _core
    from .engine import Runtime

_live: "weakref.WeakSet[Runtime]" = weakref.WeakSet()  # every Runtime not yet shut down
_exiting = False  # the interpreter is shutting down: no new tasks


def register(runtime: Runtime) -> None:
    """A new pool core: stopped at exit, made inert in forked children."""
    _live.add(runtime)


def live_runtimes() -> list[Runtime]:
    return list(_live)


def interpreter_exiting() -> bool:
    """Whether interpreter shutdown has begun (submit then raises RuntimeError, as the stdlib's)."""
    return _exiting


@atexit.register
def stop_live_runtimes() -> None:
    # Before the interpreter tears down its threads: a result thread blocked in
    # the engine must return by itself, not be frozen mid-call.
    global _exiting
    _exiting = True
    for runtime in list(_live):
        runtime.at_exit()


def run_exit_hooks() -> None:
    """shoal's exit hooks, for a process about to end with ``os._exit()``
    (which runs none): its pools are shut down, its arenas' and segments'
    shared-memory names removed and its owner token given back. Without
    them the names stay in /dev/shm until the next ``import shoal``
    reclaims them. Each hook runs even if one before it fails."""
    from .. import _core
    from ..shm import arena

    for hook in (stop_live_runtimes, arena.at_exit, _core.release_owner_token):
        try:
            hook()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


class _ForkedCopy:
    """What a pool's engine is in a child forked from the pool's process: the
    rings, arena and workers are the parent's, so every use is refused."""

    def __init__(self, owner: int) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> NoReturn:
        raise RuntimeError(
            f"this pool belongs to process {self._owner}; a process forked from it cannot use it "
            "(it would take the parent's results): create a new pool in the child"
        )


def _orphan_runtimes_in_child() -> None:
    """After fork(), in the child: every pool of the parent goes inert."""
    import ctypes

    for runtime in list(_live):
        engine = runtime._engine
        # Never destroyed here: its destructor would stop the parent's workers
        # and join threads this process does not have.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        _orphans.append(engine)
        runtime._engine = _ForkedCopy(os.getppid())  # type: ignore[assignment]  # a stand-in refusing every use
        runtime._feeds = set()
    _live.clear()


_orphans: list[_core.Engine] = []  # the parent's engines, never destroyed here
os.register_at_fork(after_in_child=_orphan_runtimes_in_child)


def clean_up_on_sigterm() -> None:
    """Where SIGTERM would kill this process without a word (its default),
    it first stops the pools and removes this process's shared-memory names,
    then dies of the same signal: what the exit path does where Python runs,
    for the signal that service managers and `docker stop` send."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _die_of_sigterm)


def _die_of_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    import signal
    import stat

    signal.signal(signum, signal.SIG_DFL)
    try:
        for runtime in list(_live):
            try:
                runtime._engine.terminate()  # the workers go first: nothing writes to the names after
            except Exception:  # noqa: BLE001 - dying anyway
                pass
        me, uid = os.getpid(), os.geteuid()
        for name in os.listdir("/dev/shm"):
            if not (name.startswith(f"shoal-{me}-") or name.startswith(f"shoal-lock-{me}-")):
                continue
            path = os.path.join("/dev/shm", name)
            try:
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and info.st_uid == uid:  # ours, never a planted link
                    os.unlink(path)
            except OSError:
                pass
    finally:
        os.kill(os.getpid(), signum)


