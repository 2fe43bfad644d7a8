"""Task functions for the pool tests (importable by worker processes)."""
import os
import time

import shoal

_state = {}


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def worker_id_and_pid(_=None):
    return shoal.worker_id(), os.getpid()


def remember(key, value):
    _state[key] = value


def recall(key):
    return _state.get(key)


def raise_in_init():
    raise RuntimeError("initializer exploded")


def unpicklable_result(_=None):
    import threading

    return threading.Lock()  # no pickler can send a lock back


def kwargs_echo(*args, **kwargs):
    return args, kwargs


def big_bytes(n):
    return b"x" * n


def length(data):
    return len(data)
