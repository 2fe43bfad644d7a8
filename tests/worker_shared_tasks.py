"""Tasks for test_worker_shared_arrays.py: they create SharedArrays in the worker (importable by spawned workers)."""
import os

import numpy as np

import shoal


def make_shared(n, value):
    """A new SharedArray, filled in the worker, returned with the worker's pid."""
    a = shoal.SharedArray((n,), dtype=np.float64)
    a[:] = value
    return a, os.getpid()


def add_to_shared(a, value):
    """Adds to a SharedArray where it lies; returns what it saw first, its sum after, and its pid."""
    first = float(a[0])
    a += value
    return first, float(a.sum()), os.getpid()


def make_and_drop(n):
    """Creates a SharedArray, writes it, lets it go; returns its sum."""
    a = shoal.SharedArray((n,), dtype=np.float64)
    a[:] = 2.0
    total = float(a.sum())
    del a
    return total


def make_and_close(n):
    """Creates a SharedArray in a with block (closed when it ends); returns its size."""
    with shoal.SharedArray((n,), dtype=np.int8) as a:
        a[:] = 1
        return int(a.size)
