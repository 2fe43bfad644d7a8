"""A SharedArray a task creates (issue 12): returned, it lives on in the caller, readable and
writable, shared, for as long as the caller holds it: after the worker that made it has exited,
after another program's stale-segment cleanup, and when it is handed to another task (which sees
the same memory). Not returned, it is freed when the worker lets go of it. Sizes: a small and a
1 MiB block in a pooled segment, and a 64 MiB block with a segment of its own (the one that
crashed the caller on its first read)."""
import gc
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

import shoal
import worker_shared_tasks as wst
from conftest import eventually
from shoal.wire import payload as wire
from shoal.shm.shared_array import Arena, _view_of, in_shared_memory

TIMEOUT = 60
KiB, MiB = 1 << 10, 1 << 20

SIZES = {"8KiB": 8 * KiB, "1MiB": MiB, "64MiB": 64 * MiB}


def gone(pid):
    """Whether the process has exited (reaped, or a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class Runner:
    """One interface over shoal.Executor and shoal.Pool with one worker, every wait bounded."""

    def __init__(self, kind, start_method, max_tasks_per_child):
        self.kind = kind
        if kind == "executor":
            self.pool = shoal.Executor(1, start_method=start_method, max_tasks_per_child=max_tasks_per_child)
        else:
            self.pool = shoal.Pool(1, start_method=start_method, maxtasksperchild=max_tasks_per_child)

    def run(self, fn, *args):
        if self.kind == "executor":
            return self.pool.submit(fn, *args).result(timeout=TIMEOUT)
        return self.pool.apply_async(fn, args).get(timeout=TIMEOUT)

    def shm_used(self):
        stats = self.pool.stats() if self.kind == "executor" else self.pool._runtime.stats()
        return stats.arena_used_bytes

    def close(self):
        if self.kind == "executor":
            self.pool.shutdown()
        else:
            self.pool.terminate()  # as leaving a `with` block; no_leaks then waits (bounded) for the workers


POOLS = [("executor", "forkserver"), ("pool", "forkserver"), ("executor", "spawn"), ("pool", "spawn")]


def _runner(request, max_tasks_per_child):
    r = Runner(*request.param, max_tasks_per_child)
    request.addfinalizer(r.close)
    return r


@pytest.fixture(params=POOLS, ids=lambda p: f"{p[0]}-{p[1]}")
def recycling(request, no_leaks):
    """A pool whose one worker exits after each task (max_tasks_per_child=1)."""
    return _runner(request, 1)


@pytest.fixture(params=POOLS, ids=lambda p: f"{p[0]}-{p[1]}")
def lasting(request, no_leaks):
    """A pool whose one worker stays."""
    return _runner(request, None)


@pytest.fixture(params=list(SIZES.values()), ids=list(SIZES))
def n(request):
    return request.param // 8  # float64 items


def stale_cleanup():
    """Another program's `import shoal`: it removes the segments of processes that are gone."""
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", "import shoal"], env=env, check=True, timeout=TIMEOUT)


def test_a_returned_shared_array_outlives_its_worker_and_stays_shared(recycling, n):
    a, maker = recycling.run(wst.make_shared, n, 7.0)
    assert isinstance(a, shoal.SharedArray)
    assert _view_of(a).block.dedicated == (n * 8 >= 64 * MiB)
    assert in_shared_memory(a) and a.flags.writeable
    eventually(lambda: gone(maker), f"worker {maker} to exit")
    stale_cleanup()
    assert a.shape == (n,) and float(a[0]) == 7.0 and float(a.sum()) == 7.0 * n  # read it all
    assert in_shared_memory(a)

    a[:] = 3.0  # the caller writes ...
    first, total, other = recycling.run(wst.add_to_shared, a, 1.0)
    assert other != maker
    assert first == 3.0 and total == 4.0 * n  # ... the next task sees it, and writes itself ...
    assert float(a[-1]) == 4.0 and float(a.sum()) == 4.0 * n  # ... into the caller's memory
    eventually(lambda: gone(other), f"worker {other} to exit")
    stale_cleanup()
    assert float(a.sum()) == 4.0 * n

    # Once more, through a worker that never saw it.
    first, total, third = recycling.run(wst.add_to_shared, a[: n // 2], 1.0)
    assert third not in (maker, other) and first == 4.0 and total == 5.0 * (n // 2)
    assert float(a[0]) == 5.0 and float(a[-1]) == 4.0

    del a
    gc.collect()
    eventually(lambda: recycling.shm_used() == 0, "the array's block to be freed")


def test_a_returned_shared_array_is_shared_with_a_task_while_its_worker_lives(lasting, n):
    a, maker = lasting.run(wst.make_shared, n, 1.0)
    assert in_shared_memory(a)
    a[0] = 10.0
    first, total, same = lasting.run(wst.add_to_shared, a, 2.0)
    assert same == maker and first == 10.0 and total == 3.0 * n + 9.0
    assert float(a[0]) == 12.0 and float(a[-1]) == 3.0
    del a
    gc.collect()
    eventually(lambda: lasting.shm_used() == 0, "the array's block to be freed")


def test_a_shared_array_a_task_does_not_return_is_freed_when_the_worker_drops_it(lasting, n):
    assert lasting.run(wst.make_and_drop, n) == 2.0 * n
    eventually(lambda: lasting.shm_used() == 0, "the dropped array's block to be freed")
    assert lasting.run(wst.make_and_close, n * 8) == n * 8
    eventually(lambda: lasting.shm_used() == 0, "the closed array's block to be freed")
    for _ in range(3):  # no build-up, task after task
        lasting.run(wst.make_and_drop, n)
    eventually(lambda: lasting.shm_used() == 0, "the dropped arrays' blocks to be freed")


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not picklable, on purpose")


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_a_failed_pack_leaves_the_shared_arrays_it_held_mapped_and_referenced(size, no_leaks):
    arena = Arena.create()
    try:
        a = shoal.SharedArray((size,), dtype=np.uint8, arena=arena)
        a[:] = 9
        block = _view_of(a).block
        with pytest.raises(TypeError):
            wire.pack([a, Unpicklable()], arena)
        assert arena.refcount(block) == 1
        assert in_shared_memory(a)
        assert int(a[-1]) == 9 and int(a.sum()) == 9 * size
        a.close()
        assert arena.used_bytes() == 0
    finally:
        arena.close()


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_unpacking_a_result_that_holds_a_shared_array_keeps_the_array_mapped(size, no_leaks):
    """The caller's side alone: a payload's reference on the array is dropped without taking
    the pin of the array just rebuilt over the block."""
    arena = Arena.create()
    try:
        a = shoal.SharedArray((size,), dtype=np.uint8, arena=arena)
        a[:] = 5
        payload = wire.pack(a, arena)
        block = _view_of(a).block
        a.close()  # as the worker lets go of it: the payload's reference keeps the block
        del a
        assert arena.refcount(block) == 1
        b = wire.unpack(payload, arena, adopt=True)
        assert arena.refcount(block) == 1
        assert in_shared_memory(b) and int(b[0]) == 5 and int(b.sum()) == 5 * size
        b[:] = 6
        c = pickle.loads(pickle.dumps(b))  # another view of the same memory
        assert int(c[-1]) == 6
        del b, c
        gc.collect()
        assert arena.used_bytes() == 0
    finally:
        arena.close()
