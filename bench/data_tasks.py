"""Tasks for bench/data.py (importable by every library's workers)."""
import numpy as np


def slice_sum(block):
    return float(np.sum(block))


def shared_slice_sum(arr, start, stop):
    return float(np.sum(arr[start:stop]))


def make_block(i, n):
    return np.full(n, float(i))


def touch_all(arr):
    return float(arr.sum())
