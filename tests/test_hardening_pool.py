"""Hardening of the pool's life cycle: concurrent shutdowns, pools nobody
holds, and a process forked from one that has a pool."""
import gc
import multiprocessing
import os
import threading
import time
import warnings

import pytest

import shoal
import tasks
from conftest import child_pids
from shm_segments import shoal_segments_of


def _wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("surface", ["executor", "pool"])
def test_many_threads_shutting_down_at_once_all_return(surface, no_leaks):
    pool = shoal.Executor(2) if surface == "executor" else shoal.Pool(2)
    submit = pool.submit if surface == "executor" else (lambda f, x: pool.apply_async(f, (x,)))
    futures = [submit(tasks.square, i) for i in range(50)]
    get = (lambda f: f.result(timeout=1)) if surface == "executor" else (lambda r: r.get(timeout=1))
    calls = (lambda: pool.shutdown(wait=True)) if surface == "executor" else (lambda: (pool.close(), pool.join()))
    threads = [threading.Thread(target=calls) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a concurrent shutdown never returned"
    assert [get(f) for f in futures] == [i * i for i in range(50)]


def test_an_executor_nobody_holds_shuts_down_after_its_tasks():
    before = set(child_pids())
    segments = shoal_segments_of(os.getpid())
    ex = shoal.Executor(2)
    fut = ex.submit(tasks.sleep_then, 5, 0.2)
    del ex
    gc.collect()
    assert fut.result(timeout=60) == 5  # what was submitted still runs, as with the stdlib
    assert _wait_until(lambda: set(child_pids()) <= before), "the workers outlived their pool"
    assert _wait_until(lambda: shoal_segments_of(os.getpid()) <= segments), "the pool's segments outlived it"


def test_a_pool_nobody_holds_warns_and_stops():
    before = set(child_pids())
    pool = shoal.Pool(2)
    assert pool.apply(tasks.square, (3,)) == 9
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert _wait_until(lambda: set(child_pids()) <= before), "the workers outlived their pool"


def _use_inherited(ex, out):
    try:
        ex.submit(tasks.square, 2).result(timeout=10)
        out.put("used")
    except RuntimeError as exc:
        out.put(f"refused: {exc}")


def test_a_forked_child_cannot_use_its_parents_pool_and_takes_nothing(no_leaks):
    ctx = multiprocessing.get_context("fork")
    with shoal.Executor(2) as ex:
        futures = [ex.submit(tasks.sleep_then, i, 0.001) for i in range(2000)]
        out = ctx.Queue()
        child = ctx.Process(target=_use_inherited, args=(ex, out))
        child.start()
        answer = out.get(timeout=60)
        child.join(timeout=60)
        assert answer.startswith("refused") and "forked" in answer, answer
        assert child.exitcode == 0
        assert [f.result(timeout=60) for f in futures] == list(range(2000))  # the parent lost nothing


def _exit_in_callback(_fut):
    raise SystemExit(3)


def test_a_done_callback_raising_system_exit_does_not_stop_later_results(no_leaks):
    with shoal.Executor(2) as ex:
        first = ex.submit(tasks.sleep_then, 1, 0.2)
        first.add_done_callback(_exit_in_callback)
        import concurrent.futures as cf

        cf.wait([first], timeout=60)  # not result(): the result thread delivers it, and runs the callback
        assert first.result(timeout=60) == 1
        later = [ex.submit(tasks.square, i) for i in range(100)]
        assert [f.result(timeout=60) for f in later] == [i * i for i in range(100)]
    with shoal.Pool(2) as pool:
        pool.apply_async(tasks.sleep_then, (1, 0.1), callback=lambda _: (_ for _ in ()).throw(SystemExit(4)))
        assert pool.map(tasks.square, range(50)) == [i * i for i in range(50)]


def test_a_pool_left_open_inside_a_worker_is_cleaned_up_when_the_worker_exits(no_leaks):
    with shoal.Executor(1, max_tasks_per_child=1) as ex:
        worker = ex.submit(tasks.leave_a_pool_open).result(timeout=60)
        ex.submit(tasks.square, 1).result(timeout=60)  # the first worker has exited by now
    def left():
        return sorted(shoal_segments_of(worker, locks=True))
    assert _wait_until(lambda: not left()), f"the worker's inner pool left {left()}"


def test_maps_never_fail_for_the_arena_limit_while_one_item_fits(no_leaks):
    import numpy as np

    with shoal.Executor(2, shm_limit="16MB") as ex:  # room for three 4 MiB buffers
        results = ex.map(tasks.four_mib, range(40))  # 160 MiB of results, read lazily
        assert [float(a[0]) for a in results] == [float(i) for i in range(40)]
        arrays = [np.full(512 * 1024, i, dtype=np.float64) for i in range(40)]
        assert list(ex.map(tasks.first_value, arrays)) == [float(i) for i in range(40)]
    with shoal.Pool(2, shm_limit="16MB") as pool:
        assert [float(a[0]) for a in pool.map(tasks.four_mib, range(40))] == [float(i) for i in range(40)]


def test_default_sigterm_still_kills_but_removes_the_shared_memory_names(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "served.py"
    script.write_text(
        "import sys, numpy as np, shoal\n"
        "ex = shoal.Executor(2)\n"
        "keep = shoal.SharedArray((1000,), dtype=np.float64)\n"
        "ex.submit(abs, 1).result(timeout=60)\n"
        "print('READY', flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, str(script)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        assert shoal_segments_of(child.pid), "the pool should have named segments while it runs"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == -signal.SIGTERM  # it still dies of the signal
        leftover = shoal_segments_of(child.pid, locks=True)
        assert not leftover, leftover
    finally:
        child.kill()
        child.wait(timeout=60)
