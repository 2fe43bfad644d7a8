import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

import shoal
import tasks
from conftest import rss_kib


@pytest.fixture
def ex(no_leaks):
    executor = shoal.Executor(2)
    yield executor
    executor.shutdown(wait=True)


def test_is_a_concurrent_futures_executor_with_real_futures(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(tasks.add, 2, b=3)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 5


def test_submit_passes_args_and_kwargs(ex):
    assert ex.submit(tasks.kwargs_echo, 1, 2, k="v").result(timeout=30) == ((1, 2), {"k": "v"})


def test_map_is_ordered_and_follows_zip(ex):
    assert list(ex.map(tasks.square, range(200))) == [x * x for x in range(200)]
    assert list(ex.map(tasks.add, [1, 2, 3], [10, 20])) == [11, 22]
    assert list(ex.map(tasks.square, [])) == []


def test_map_with_explicit_chunksize(ex):
    assert list(ex.map(tasks.square, range(50), chunksize=7)) == [x * x for x in range(50)]
    with pytest.raises(ValueError):
        ex.map(tasks.square, range(3), chunksize=0)


def test_map_consumes_a_generator_lazily(ex):
    pulled = []

    def numbers():
        for i in range(10**9):
            pulled.append(i)
            yield i

    results = ex.map(tasks.square, numbers())
    first = [next(results) for _ in range(100)]
    assert first == [x * x for x in range(100)]
    # Nobody reads on: the read-ahead must stop. Wait until the pool is idle
    # and nothing more was pulled or submitted between two looks.
    seen, deadline = None, time.monotonic() + 60
    while True:
        stats = ex.stats()
        now = (len(pulled), stats.submitted) if stats.submitted == stats.ended else None
        if now is not None and now == seen:
            break
        assert time.monotonic() < deadline, f"the map kept reading its input ({len(pulled)} items)"
        seen = now
        time.sleep(0.01)
    assert len(pulled) < 1_000_000  # read-ahead is bounded, not the whole input
    results.close()


def test_map_raises_the_task_exception_when_its_item_is_reached(ex):
    results = ex.map(tasks.fail_on, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)


def test_map_timeout_raises_timeout_error(ex):
    results = ex.map(tasks.sleep_then, [1, 2], [5, 5], timeout=0.3)
    with pytest.raises(cf.TimeoutError):
        list(results)


def test_lambdas_closures_and_main_functions_work(ex):
    offset = 10
    assert ex.submit(lambda x: x + offset, 5).result(timeout=30) == 15
    assert list(ex.map(lambda x: -x, range(5))) == [0, -1, -2, -3, -4]


def test_exception_keeps_type_message_and_remote_traceback(ex):
    fut = ex.submit(tasks.fail_on, 3)
    with pytest.raises(ValueError, match="bad item 3") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, shoal.RemoteTraceback)
    assert "tasks.py" in cause.tb and "fail_on" in cause.tb


def test_unpicklable_argument_fails_its_future_as_the_stdlib_and_pool_keeps_working(ex):
    fut = ex.submit(tasks.identity, threading.Lock())  # as ProcessPoolExecutor: no raise here
    with pytest.raises(TypeError, match="cannot pickle") as info:
        fut.result(timeout=30)
    if hasattr(info.value, "__notes__"):
        assert any("argument" in note for note in info.value.__notes__)
    assert ex.submit(tasks.square, 4).result(timeout=30) == 16


def test_unpicklable_result_arrives_as_the_picklers_error(ex):
    with pytest.raises(TypeError, match="cannot pickle"):
        ex.submit(tasks.unpicklable_result).result(timeout=30)


def test_submit_after_shutdown_raises_runtime_error(no_leaks):
    ex = shoal.Executor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 2)


def test_context_manager_waits_for_work(no_leaks):
    with shoal.Executor(2) as ex:
        futs = [ex.submit(tasks.sleep_then, i, 0.05) for i in range(6)]
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(6))


def test_as_completed_and_wait(ex):
    futs = [ex.submit(tasks.sleep_then, i, 0.01 * (5 - i)) for i in range(5)]
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == list(range(5))
    done, not_done = cf.wait(futs, timeout=30)
    assert len(done) == 5 and not not_done


def test_result_in_the_caller_while_many_are_in_flight_loses_and_repeats_nothing(ex):
    # result() takes its own result straight from the workers; the rest must
    # still reach their futures (and callbacks) through the result thread, once.
    called = []
    futs = [ex.submit(tasks.square, i) for i in range(500)]
    for f in futs:
        f.add_done_callback(lambda f: called.append(f.result()))
    assert futs[250].result(timeout=30) == 250 * 250
    assert futs[499].exception(timeout=30) is None
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=60)) == sorted(i * i for i in range(500))
    deadline = time.monotonic() + 10
    while len(called) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(called) == sorted(i * i for i in range(500))


def test_result_timeout_on_a_running_task_then_the_result(ex):
    release = shoal.Event()
    fut = ex.submit(tasks.wait_for_event, release)  # cannot finish before release.set()
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.05)
    release.set()
    assert fut.result(timeout=30) is True


def test_threads_waiting_on_each_others_futures_all_get_theirs(ex):
    futs = [ex.submit(tasks.sleep_then, i, 0.001 * (i % 7)) for i in range(64)]
    got = [None] * 64

    def wait_on(i):
        got[i] = futs[i].result(timeout=60)

    threads = [threading.Thread(target=wait_on, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == list(range(64))


def test_tasks_that_wait_for_each_other_run_side_by_side(ex):
    # The dispatcher prefers a worker that is awake, but never queues a task
    # behind a running one while another worker is idle.
    for _ in range(3):
        barrier = shoal.Barrier(2)
        assert ex.submit(tasks.square, 2).result(timeout=30) == 4  # one worker is warm and awake
        futs = [ex.submit(tasks.wait_at_barrier, barrier, 10) for _ in range(2)]
        assert sorted(f.result(timeout=30) for f in futs) == [0, 1]


def test_cancel_a_queued_future(no_leaks):
    release = shoal.Event()
    with shoal.Executor(1) as ex:
        blocker = ex.submit(tasks.wait_for_event, release)  # holds the only worker until release.set()
        queued = [ex.submit(tasks.square, i) for i in range(30)]
        cancelled = [f for f in queued[10:] if f.cancel()]
        assert cancelled, "jobs still in the central queue must be cancellable"
        assert all(f.cancelled() for f in cancelled)
        release.set()
        done, _ = cf.wait(queued, timeout=30)
        assert len(done) == 30
        assert blocker.result(timeout=30) is True
        for i, f in enumerate(queued):
            if not f.cancelled():
                assert f.result() == i * i


def test_shutdown_cancel_futures(no_leaks):
    release = shoal.Event()
    ex = shoal.Executor(1)
    first = ex.submit(tasks.wait_for_event, release)  # holds the only worker until release.set()
    rest = [ex.submit(tasks.square, i) for i in range(50)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    deadline = time.monotonic() + 60
    while not any(f.cancelled() for f in rest) and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()  # the first task ends only once shutdown has cancelled the queue
    stopper.join(60)
    assert not stopper.is_alive()
    assert first.result() is True
    assert any(f.cancelled() for f in rest)
    for i, f in enumerate(rest):
        assert f.cancelled() or f.result() == i * i


def test_asyncio_wrap_future(ex):
    async def main():
        return await asyncio.wrap_future(ex.submit(tasks.square, 9))

    assert asyncio.run(main()) == 81


def test_initializer_state_persists_in_each_worker(no_leaks):
    with shoal.Executor(2, initializer=tasks.remember, initargs=("k", "v")) as ex:
        assert set(ex.map(tasks.recall, ["k"] * 20)) == {"v"}


def test_failing_initializer_breaks_the_pool_with_a_clear_error(no_leaks):
    with shoal.Executor(1, initializer=tasks.raise_in_init) as ex:
        # The pool may already be broken when submit runs (then submit raises).
        with pytest.raises(shoal.BrokenPoolError, match="initializer exploded"):
            ex.submit(tasks.square, 3).result(timeout=30)
        with pytest.raises(shoal.BrokenPoolError):
            ex.submit(tasks.square, 3)


def test_worker_id_is_the_workers_index(ex):
    ids = {wid for wid, _ in ex.map(tasks.worker_id_and_pid, range(200), chunksize=1)}
    assert ids <= {0, 1} and ids
    assert shoal.worker_id() is None


def test_max_tasks_per_child_replaces_workers(no_leaks):
    with shoal.Executor(1, max_tasks_per_child=3) as ex:
        pids = [ex.submit(tasks.worker_id_and_pid).result(timeout=30)[1] for _ in range(9)]
    assert len(set(pids)) == 3
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [3, 3, 3]


def test_spawn_start_method(no_leaks):
    with shoal.Executor(2, start_method="spawn") as ex:
        assert list(ex.map(tasks.square, range(10))) == [x * x for x in range(10)]


def test_large_arguments_and_results_travel_through_spill_segments(ex):
    blob = os.urandom(3 << 20)
    assert ex.submit(tasks.length, blob).result(timeout=30) == len(blob)
    assert len(ex.submit(tasks.big_bytes, 5 << 20).result(timeout=30)) == 5 << 20


def test_shutdown_leaves_no_process_and_no_segment(no_leaks):
    ex = shoal.Executor(2)
    ex.submit(tasks.square, 2).result(timeout=30)
    deadline = time.monotonic() + 10
    while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = ex.worker_pids()
    assert len(pids) == 2
    ex.shutdown(wait=True)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def _open_fds():
    return len(os.listdir("/proc/self/fd"))



def test_100k_tasks_without_growth_in_memory_or_descriptors(ex):
    def batch(start):
        futs = [ex.submit(tasks.square, i) for i in range(start, start + 10_000)]
        return sum(f.result(timeout=60) for f in cf.as_completed(futs))

    batch(0)  # warm-up: allocator pools reach the size one batch needs
    fds, rss = _open_fds(), rss_kib()
    total = sum(batch(start) for start in range(0, 100_000, 10_000))
    assert total == sum(i * i for i in range(100_000))
    assert _open_fds() <= fds
    # A leak of even 256 bytes per task would add 25 MiB.
    assert rss_kib() - rss < 20 * 1024


def test_a_slow_done_callback_does_not_stall_the_workers(ex, tmp_path):
    # A callback added before the result arrives runs in the pool's result
    # thread; while it takes its time, the engine keeps handing queued tasks to
    # the workers (they would otherwise run dry once the few tasks queued in
    # their inboxes are done).
    started = threading.Event()
    ran_during_callback = []

    def slow(_):
        # Holds the result thread until the tasks have all run (or 60 s passed).
        started.set()
        deadline = time.monotonic() + 60
        while len(os.listdir(tmp_path)) < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        ran_during_callback.append(len(os.listdir(tmp_path)))

    release = shoal.Event()
    gate = ex.submit(tasks.wait_for_event, release)
    gate.add_done_callback(slow)  # added before the result arrives: it runs in the result thread
    release.set()
    assert started.wait(timeout=30)
    futs = [ex.submit(tasks.touch, i, str(tmp_path)) for i in range(1000)]
    done, not_done = cf.wait(futs, timeout=60)
    assert not not_done
    assert ran_during_callback and ran_during_callback[0] >= 900, ran_during_callback
