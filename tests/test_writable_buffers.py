"""Big buffers a task receives (arguments, results) are writable, as after a pickle round trip,
yet copied only where written: each receiver gets a private copy-on-write mapping of the arena's
block, so a write reaches neither the sender nor any other receiver. SharedArray stays shared."""
import pickle

import cloudpickle
import numpy as np
import pytest

import shoal
import writable_tasks as wt
from shoal.wire import payload as wire
from shoal.shm.shared_array import in_shared_memory

TIMEOUT = 60
MiB = 1 << 20


class Runner:
    """One interface over shoal.Executor and shoal.Pool, every wait bounded."""

    def __init__(self, kind, start_method):
        self.kind = kind
        if kind == "executor":
            self.pool = shoal.Executor(2, start_method=start_method)
        else:
            self.pool = shoal.Pool(2, start_method=start_method)

    def submit(self, fn, *args, **options):
        if self.kind == "executor":
            future = self.pool.with_options(**options).submit(fn, *args)
            return lambda: future.result(timeout=TIMEOUT)
        result = self.pool.apply_async(fn, args, **options)
        return lambda: result.get(timeout=TIMEOUT)

    def run(self, fn, *args, **options):
        return self.submit(fn, *args, **options)()

    def map(self, fn, items):
        if self.kind == "executor":
            return list(self.pool.map(fn, items, timeout=TIMEOUT, chunksize=1))
        return self.pool.map_async(fn, items, chunksize=1).get(timeout=TIMEOUT)

    def close(self):
        if self.kind == "executor":
            self.pool.shutdown()
        else:
            self.pool.terminate()  # as leaving a `with` block; no_leaks then waits (bounded) for the workers


@pytest.fixture(
    params=[("executor", "forkserver"), ("pool", "forkserver"), ("executor", "spawn"), ("pool", "spawn")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def runner(request, no_leaks):
    r = Runner(*request.param)
    yield r
    r.close()


def big_arange():
    return np.arange(MiB // 8, dtype=np.float64)[::-1].copy()  # 1 MiB, descending: sorting changes it


def test_a_task_can_sort_its_big_argument_in_place_and_the_caller_keeps_its_own(runner):
    arr = big_arange()
    keep = arr.copy()
    assert arr.nbytes >= wire.DEFAULT_THRESHOLD  # big enough for the arena
    back = runner.run(wt.sort_in_place, arr)
    assert np.array_equal(back, np.sort(keep))
    assert np.array_equal(arr, keep)  # the caller's array is untouched


def test_a_task_can_add_to_its_big_argument_and_the_caller_keeps_its_own(runner):
    arr = big_arange()
    keep = arr.copy()
    total, first, last = runner.run(wt.add_one_in_place, arr)
    assert (total, first, last) == (float((keep + 1).sum()), keep[0] + 1, keep[-1] + 1)
    assert np.array_equal(arr, keep)


def test_a_big_result_is_writable_in_the_caller(runner):
    r = runner.run(wt.ones, MiB)
    assert in_shared_memory(r)  # it came through the arena, without a copy
    assert r.flags.writeable
    r += 1
    r[:10].sort()
    assert (r == 2.0).all()


def test_tasks_given_the_same_big_argument_each_see_the_original(runner):
    arr = np.arange(MiB // 8, dtype=np.float64)
    # Both run at once, one per worker, each overwriting its copy while the other checks its own.
    first = runner.submit(wt.scribble_after_checking, arr, 1.0, 0.5)
    second = runner.submit(wt.scribble_after_checking, arr, 2.0, 0.5)
    assert first() == (True, True)
    assert second() == (True, True)
    assert runner.map(wt.add_one_in_place, [arr, arr]) == [runner.run(wt.add_one_in_place, arr)] * 2
    assert np.array_equal(arr, np.arange(MiB // 8, dtype=np.float64))


def test_a_retried_task_sees_its_argument_as_sent_though_the_failed_attempt_wrote_to_it(runner, tmp_path):
    # The retry re-sends the very same payload, so the same arena block: only a private
    # mapping keeps the first attempt's write out of it.
    arr = np.arange(MiB // 8, dtype=np.float64)
    assert runner.run(wt.write_then_die_once, arr, str(tmp_path / "died"), retries=1) is True
    assert (tmp_path / "died").exists()
    assert np.array_equal(arr, np.arange(MiB // 8, dtype=np.float64))


def test_bytes_bytearrays_and_memoryviews_arrive_as_pickle_delivers_them(runner):
    data = bytes(range(256)) * (MiB // 256)
    # bytes stay bytes: immutable.
    assert runner.run(wt.describe, data) == ("bytes", True, data[:4])
    # A bytearray arrives as a writable bytearray of the worker's own.
    mutable = bytearray(data)
    assert runner.run(wt.describe, mutable) == ("bytearray", False, data[:4])
    assert runner.run(wt.write_buffer, mutable, 9) == b"\x09" * 4
    assert mutable == data
    # A memoryview travels as the pickler sends it (cloudpickle: its bytes).
    view = memoryview(mutable)
    expected = cloudpickle.loads(cloudpickle.dumps(view))
    assert runner.run(wt.describe, view) == (type(expected).__name__, memoryview(expected).readonly, data[:4])
    # Out-of-band buffers keep pickle's rule: a read-only one stays read-only, a writable one
    # is writable (through the arena, copy-on-write) and the sender's stays as it was.
    assert runner.run(wt.describe, pickle.PickleBuffer(data))[1:] == (True, data[:4])
    assert runner.run(wt.describe, pickle.PickleBuffer(mutable))[1:] == (False, data[:4])
    assert runner.run(wt.write_buffer, pickle.PickleBuffer(mutable), 7) == b"\x07" * 4
    assert mutable == data
    frozen = big_arange()
    frozen.flags.writeable = False
    assert runner.run(wt.describe, frozen)[1] is True


@pytest.fixture
def default_arena_ready():
    """The process-wide arena (SharedArray's) lives as long as the process; make its first segment
    before no_leaks looks."""
    with shoal.SharedArray((1,)):
        pass


def test_a_shared_array_is_still_shared(default_arena_ready, runner):
    shared = shoal.SharedArray((MiB // 8,), dtype=np.float64)
    assert runner.run(wt.fill_shared, shared, 5.0) == MiB // 8
    assert (shared == 5.0).all()  # the task's write landed in the caller's array
    halves = [shared[: MiB // 16], shared[MiB // 16 :]]
    assert runner.map(wt.fill_with_size, halves) == [MiB // 16] * 2
    assert (shared == 1.0 * (MiB // 16)).all()
    del halves
    shared.close()
