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
