"""Tasks for test_writable_buffers.py: they write to what they receive (importable by spawned workers)."""
import os
import time

import numpy as np


def sort_in_place(arr):
    """Sorts its argument where it lies and returns it (a big result) with whether it could."""
    arr.sort()
    return arr


def add_one_in_place(arr):
    arr += 1
    return float(arr.sum()), float(arr[0]), float(arr[-1])


def describe(obj):
    """What a worker received: its type, whether its buffer is read-only, its first bytes."""
    view = memoryview(obj)
    return type(obj).__name__, view.readonly, bytes(view.cast("B")[:4])


def write_buffer(obj, value):
    """Writes `value` over the first 4 bytes of a writable buffer; returns what is there after."""
    view = memoryview(obj).cast("B")
    view[:4] = bytes([value]) * 4
    return bytes(view[:4])


def scribble_after_checking(arr, value, delay):
    """Checks it got the original arange, overwrites it all, waits for the other task to do the same,
    checks again that only its own write shows; returns both checks."""
    original = bool(np.array_equal(arr, np.arange(arr.size, dtype=arr.dtype)))
    arr[:] = value
    time.sleep(delay)
    return original, bool((arr == value).all())


def write_then_die_once(arr, marker):
    """The first attempt overwrites the argument and kills its worker; the retry reports what it got."""
    if not os.path.exists(marker):
        arr[:] = -1.0
        with open(marker, "w"):
            pass
        os._exit(3)
    return bool(np.array_equal(arr, np.arange(arr.size, dtype=arr.dtype)))


def fill_shared(shared, value):
    shared[:] = value
    return int(shared.size)


def ones(n):
    return np.ones(n)


def fill_with_size(shared):
    shared[:] = shared.size
    return int(shared.size)
