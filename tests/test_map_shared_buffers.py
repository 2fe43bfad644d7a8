"""An array repeated in one map, or bound into its callable, is copied into
shared memory once for the map, not once per task; never sent stale."""
import functools
import gc

import numpy as np
import pytest

import shoal
import tasks
from conftest import eventually
from shoal.wire.payload import BufferMemo, pack, release, unpack

MIB = 1 << 20


@pytest.fixture
def ex(no_leaks):
    executor = shoal.Executor(2)
    yield executor
    executor.shutdown()


def held_sum(arr, k, started, release_event):
    """Holds its worker (and so its chunk, with its arena reference) until released."""
    tasks.signal_then_wait_for_event(started, release_event)
    return float(arr.sum()) + k


def wait_for_tasks(started, n):
    for _ in range(n):
        assert started.acquire(timeout=60), "a task did not start"


def test_an_array_repeated_in_one_map_is_copied_into_the_arena_once(ex):
    arr = np.arange(4 * MIB // 8, dtype=np.float64)  # 4 MiB
    started, hold = shoal.Semaphore(0), shoal.Event()
    n = 12
    results = ex.map(held_sum, [arr] * n, range(n), [started] * n, [hold] * n, chunksize=1)
    wait_for_tasks(started, 2)  # both workers hold a chunk; more are queued behind them
    eventually(lambda: ex.stats().submitted >= 6, what="the map's read-ahead submitted its chunks")
    used = ex.stats().arena_used_bytes  # sampled at each submit
    assert arr.nbytes <= used < 2 * arr.nbytes, used  # one copy for six chunks in flight, not six
    hold.set()
    assert list(results) == [float(arr.sum()) + k for k in range(n)]
    eventually(lambda: ex.stats().arena_used_bytes == 0, what="the map's copy was freed")


def test_a_map_over_a_generator_that_refills_one_buffer_sends_each_item_as_it_was():
    def refilled(n):
        buf = np.empty(MIB // 8)
        for i in range(n):
            buf[:] = i
            yield buf  # the same object every time, with new contents

    with shoal.Executor(2) as ex:
        for chunksize in (1, None):  # None: chunks of shoal's choosing (test_lazy_map_items.py)
            got = list(ex.map(tasks.first_value, refilled(20), chunksize=chunksize))
            assert got == [float(i) for i in range(20)]


def test_arrays_that_differ_are_each_sent_with_their_own_data(ex):
    arrays = [np.full(MIB // 8, float(i)) for i in range(10)]  # more than the memo keeps
    assert list(ex.map(tasks.first_value, arrays + arrays[::-1], chunksize=1)) == [
        float(i) for i in list(range(10)) + list(range(10))[::-1]
    ]


def test_a_task_that_writes_its_repeated_array_changes_no_other_task_or_the_caller(ex):
    arr = np.zeros(MIB // 8)
    assert list(ex.map(tasks.try_write, [arr] * 8, chunksize=1)) == list(ex.map(tasks.try_write, [arr] * 8))
    assert not arr.any()
    # Each task sees zeros in its copy-on-write view, whatever the others wrote.
    assert list(ex.map(tasks.first_value, [arr] * 8, chunksize=1)) == [0.0] * 8


def test_separate_submits_send_the_array_as_it_is_at_each_submit(ex):
    arr = np.zeros(MIB // 8)
    first = ex.submit(tasks.first_value, arr)
    arr[0] = 5.0
    second = ex.submit(tasks.first_value, arr)
    assert (first.result(timeout=60), second.result(timeout=60)) == (0.0, 5.0)


def test_an_array_bound_into_a_maps_callable_travels_through_the_arena_and_is_freed_with_the_map(ex):
    arr = np.arange(4 * MIB // 8, dtype=np.float64)
    fn = functools.partial(tasks.scale_by, [2.0])  # scale_by(factor, x): a partial without big buffers
    assert list(ex.map(fn, [1.0, 2.0])) == [2.0, 4.0]
    total = functools.partial(np.dot, arr)
    expected = [float(np.dot(arr, np.full_like(arr, k))) for k in range(4)]
    assert list(ex.map(total, [np.full_like(arr, k) for k in range(4)], chunksize=1)) == expected
    eventually(lambda: ex.stats().arena_used_bytes == 0, what="the callable's copy was freed with its map")
    # The pool goes on, and a new map with the same callable packs it anew.
    assert list(ex.map(total, [np.ones_like(arr)])) == [float(arr.sum())]


def test_a_shared_array_bound_into_a_maps_callable_is_used_by_reference():
    with shoal.Executor(2) as ex:
        shared = shoal.share(np.arange(1000, dtype=np.float64))
        try:
            fn = functools.partial(tasks.fill_slice, shared)  # fill_slice(shared, start, stop, value)
            assert list(ex.map(fn, [0, 500], [500, 1000], [1.0, 2.0])) == [500, 500]
            assert np.asarray(shared)[:500].tolist() == [1.0] * 500
            assert np.asarray(shared)[500:].tolist() == [2.0] * 500
        finally:
            shared.close()


def test_the_memo_forgets_an_array_once_it_is_gone():
    memo = BufferMemo()
    arr = np.ones(MIB // 8)
    payloads = [pack([arr], memo=memo) for _ in range(3)]
    assert len(memo) == 1
    del arr
    gc.collect()
    assert len(memo) == 0  # nothing kept for an object that no longer exists
    for payload in payloads:
        assert float(unpack(payload)[0][0]) == 1.0
        release(payload)


def test_the_memo_keeps_only_its_most_recently_used_copies():
    memo = BufferMemo()
    arrays = [np.full(MIB // 8, float(i)) for i in range(BufferMemo.SIZE + 3)]
    payloads = [pack([a], memo=memo) for a in arrays]
    assert len(memo) == BufferMemo.SIZE
    memo.clear()
    assert len(memo) == 0
    assert [float(unpack(p)[0][0]) for p in payloads] == [float(i) for i in range(len(arrays))]
    for payload in payloads:
        release(payload)
