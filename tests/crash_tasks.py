"""Faults for the crash matrix (tests/test_crash_matrix.py): each kind of
failure, triggered at each point a task passes through."""
import ctypes
import os
import signal
import threading
import time

KINDS = ("exception", "unpicklable", "exit", "os_exit", "segv", "sigkill", "hang")


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("carries a lock")
        self.lock = threading.Lock()


def fault(kind):
    """Does the fault `kind` here and now."""
    if kind == "exception":
        raise ValueError("injected fault")
    if kind == "unpicklable":
        raise Unpicklable()
    if kind == "exit":
        raise SystemExit(9)
    if kind == "os_exit":
        os._exit(3)
    if kind == "segv":
        ctypes.string_at(0)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(3600)
    raise AssertionError(kind)


class FaultWhenPickled:
    """Does the fault while being pickled ("unpicklable": holds a lock)."""

    def __init__(self, kind):
        self.kind = kind
        self.lock = threading.Lock() if kind == "unpicklable" else None

    def __reduce__(self):
        if self.kind == "unpicklable":
            return object.__reduce__(self)  # pickling the lock fails
        fault(self.kind)


class FaultWhenUnpickled:
    """Pickles fine; does the fault in whichever process unpickles it."""

    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        return (fault, (self.kind,))


def run_fault(kind):
    fault(kind)


def return_fault_when_pickled(kind):
    return FaultWhenPickled(kind)


def return_fault_when_unpickled(kind):
    return FaultWhenUnpickled(kind)


def take(_arg):
    return "ran"


def square(x):
    return x * x


def fault_at_item(x, bad, kind, runs_dir, once_dir=None):
    """A map item that takes a few milliseconds (longer than the worker waits
    before it sends results ahead), counts its runs in `runs_dir`, and does
    the fault `kind` at item `bad` (only on its first run, given `once_dir`)."""
    time.sleep(0.003)
    if x == bad and (once_dir is None or _first_time(once_dir, x)):
        fault(kind)
    fd = os.open(os.path.join(runs_dir, str(x)), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    return x * 10


def _first_time(directory, x):
    try:
        os.close(os.open(os.path.join(directory, str(x)), os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False
