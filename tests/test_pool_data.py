"""Big data through the pools: out-of-band buffers in the arena, SharedArray by reference."""
import os
import time

import numpy as np
import pytest

import shoal
import tasks
from conftest import rss_kib
from shoal.shm.shared_array import in_shared_memory


@pytest.fixture
def ex(no_leaks):
    executor = shoal.Executor(2)
    yield executor
    executor.shutdown()


@pytest.mark.parametrize("dtype", ["float64", "float32", "int8", "uint16", "int64", "complex128", "bool"])
@pytest.mark.parametrize("shape", [(0,), (7,), (300, 301), (20, 30, 40)])
def test_arrays_round_trip_exactly_as_arguments_and_results(ex, dtype, shape):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    back = ex.submit(tasks.identity, arr).result(timeout=60)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    assert np.array_equal(back, arr)


def test_big_arguments_arrive_as_writable_zero_copy_views(ex):
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    shape, dtype, writeable, shared, total = ex.submit(tasks.describe_array, arr).result(timeout=60)
    assert (shape, dtype, total) == (arr.shape, "float64", float(arr.sum()))
    assert shared and writeable  # copy-on-write: writable as a pickled copy, copied only where written
    assert ex.submit(tasks.try_write, arr).result(timeout=60) == "written"
    assert arr[0] == 0.0  # the write stayed in the worker
    small = np.arange(10.0)  # below the threshold: pickled in-band, an ordinary copy
    assert ex.submit(tasks.describe_array, small).result(timeout=60)[3] is False


def test_big_results_come_back_through_shared_memory(ex):
    out = ex.submit(tasks.ones, 1 << 20).result(timeout=60)
    assert out.sum() == 1 << 20 and in_shared_memory(out)


def test_non_contiguous_and_object_arrays(ex):
    base = np.arange(400 * 400, dtype=np.int64).reshape(400, 400)
    view = base[::3, 1::2]
    assert np.array_equal(ex.submit(tasks.identity, view).result(timeout=60), view)
    objects = np.array([{"a": 1}, None, "x"] * 30000, dtype=object)
    assert list(ex.submit(tasks.identity, objects).result(timeout=60)) == list(objects)


@pytest.fixture
def default_arena_ready():
    """The process-wide arena lives as long as the process; make its first segment now."""
    with shoal.SharedArray((1,)):
        pass


def test_shared_array_writes_from_several_workers_land(default_arena_ready, ex):
    with shoal.SharedArray((1000,), dtype=np.int32) as shared:
        counts = list(ex.map(tasks.fill_slice, [shared] * 10, range(0, 1000, 100), range(100, 1100, 100),
                             range(1, 11), chunksize=1))
        assert counts == [100] * 10
        assert np.array_equal(shared, np.repeat(np.arange(1, 11, dtype=np.int32), 100))


def test_shm_limit_gives_a_clear_memory_error_and_the_pool_goes_on(no_leaks):
    with shoal.Executor(1, shm_limit="1MB") as ex:
        with pytest.raises(MemoryError, match="shm_limit"):
            ex.submit(tasks.identity, np.zeros(1 << 20))  # 8 MiB > 1 MiB
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9



def test_ten_thousand_one_mib_tasks_leave_the_arena_empty_and_rss_flat(ex):
    arr = np.ones(1 << 17)  # 1 MiB
    list(ex.map(tasks.length, [arr] * 50, chunksize=1))  # warm-up
    rss = rss_kib()
    total = sum(ex.map(tasks.length, (arr for _ in range(10_000)), chunksize=1))
    assert total == 10_000 * len(arr)
    assert ex.stats().arena_used_bytes == 0
    assert rss_kib() - rss < 64 * 1024  # not 1 MiB per task (that would be 10 GiB)


def test_a_big_shared_array_stays_usable_in_the_caller_after_tasks_used_it():
    # Regression: releasing a job's payload once dropped the caller's own
    # mapping of a SharedArray in a segment of its own (a crash on next access).
    # (Not under no_leaks: the process-wide arena keeps that segment's name
    # until it is closed at exit; see the notes on the arena.)
    with shoal.Executor(2) as ex, shoal.SharedArray((8 << 20) // 8) as shared:  # a dedicated segment
        shared[:] = 2.0
        totals = [f.result(timeout=60) for f in [ex.submit(tasks.describe_array, shared) for _ in range(4)]]
        assert {t[4] for t in totals} == {float(shared.size * 2)}
        assert float(shared.sum()) == shared.size * 2


def test_a_worker_keeps_a_shared_array_mapped_between_tasks_and_unmaps_it_once_freed(default_arena_ready, no_leaks):
    # Mapping the array's segment and faulting its pages in again for every
    # task made SharedArray tasks several times slower than in-process work.
    nbytes = 32 << 20  # a segment of its own
    with shoal.Executor(1) as ex:
        shared = shoal.SharedArray(nbytes // 8)
        shared[:] = 1.0
        assert ex.submit(tasks.describe_array, shared).result(timeout=60)[4] == shared.size
        # The task's view is gone, yet the worker still maps the segment ...
        assert len(ex.submit(tasks.shm_mappings_of_at_least, nbytes).result(timeout=60)) == 1
        shared.close()
        # ... until the array is freed: then the idle worker unmaps it, so the memory goes back.
        deadline = time.monotonic() + 10
        while ex.submit(tasks.shm_mappings_of_at_least, nbytes).result(timeout=60):
            assert time.monotonic() < deadline, "the worker still maps a freed SharedArray"
            time.sleep(0.2)
