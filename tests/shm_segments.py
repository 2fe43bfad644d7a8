"""The one helper for the shared-memory names a shoal process owns in /dev/shm:
``shoal-<pid>-...`` for its segments and ``shoal-lock-<pid>-...`` for its lock
files. Plain Python (no pytest), so scripts and child processes of the tests can
import it too."""
import os

SHM = "/dev/shm"


def shoal_segments_of(pid=None, *, locks=False) -> set:
    """The names in /dev/shm of process `pid`'s segments (this process's by
    default), and of its lock files too with `locks`."""
    pid = os.getpid() if pid is None else pid
    prefixes = (f"shoal-{pid}-", f"shoal-lock-{pid}-") if locks else (f"shoal-{pid}-",)
    return {name for name in os.listdir(SHM) if name.startswith(prefixes)}
