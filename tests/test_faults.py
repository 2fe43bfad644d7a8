"""Fault tolerance with real processes and real signals."""
import concurrent.futures as cf
import logging
import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shoal
import tasks
from conftest import wait_until_asleep


def _chaos_inputs(tmp_path, n=2000, share=0.05, seed=7):
    rng = random.Random(seed)
    doomed = set(rng.sample(range(n), int(n * share)))
    for x in doomed:
        (tmp_path / f"{x}.doomed").touch()
    return doomed


def test_chaos_with_retries_every_result_exactly_once(tmp_path, no_leaks):
    doomed = _chaos_inputs(tmp_path)
    with shoal.Executor(2) as ex:
        futs = {x: ex.with_options(retries=3).submit(tasks.kill_self_once, x, str(tmp_path)) for x in range(2000)}
        results = {x: f.result(timeout=120) for x, f in futs.items()}
        assert ex.stats().workers_lost >= len(doomed)
    assert results == {x: 2 * x for x in range(2000)}
    assert len(list(tmp_path.glob("*.killed"))) == len(doomed)  # each doomed task died once


def test_chaos_without_retries_fails_exactly_the_killed_tasks(no_leaks):
    rng = random.Random(11)
    doomed = frozenset(rng.sample(range(2000), 100))
    with shoal.Executor(2) as ex:
        futs = {x: ex.submit(tasks.kill_self_if, x, doomed) for x in range(2000)}
        for x, f in futs.items():
            if x in doomed:
                with pytest.raises(shoal.WorkerLostError, match=r"worker \d \(pid \d+\) was killed by signal 9 \(SIGKILL\)"):
                    f.result(timeout=120)
            else:
                assert f.result(timeout=120) == 2 * x


def test_map_with_retries_survives_crashes(tmp_path, no_leaks):
    doomed = _chaos_inputs(tmp_path, n=300, share=0.05, seed=3)
    with shoal.Pool(2) as pool:
        # A retry re-runs the whole chunk; each doomed item dies once, so a
        # chunk may need as many retries as it holds doomed items.
        out = pool.starmap(tasks.kill_self_once, [(x, str(tmp_path)) for x in range(300)], retries=len(doomed))
    assert out == [2 * x for x in range(300)] and doomed


def test_task_over_its_time_limit_raises_timeout_error_and_others_go_on(no_leaks):
    with shoal.Executor(2) as ex:
        stuck = ex.with_options(task_timeout=0.5).submit(tasks.sleep_forever)
        fine = [ex.with_options(task_timeout=30).submit(tasks.square, i) for i in range(20)]
        with pytest.raises(TimeoutError, match="time limit of 0.5 s"):
            stuck.result(timeout=30)
        assert [f.result(timeout=30) for f in fine] == [i * i for i in range(20)]
        assert list(ex.map(tasks.square, range(5), task_timeout=10)) == [0, 1, 4, 9, 16]


def test_pool_apply_async_and_map_timeouts(no_leaks):
    with shoal.Pool(2) as pool:
        r = pool.apply_async(tasks.sleep_forever, task_timeout=0.3)
        with pytest.raises(TimeoutError):
            r.get(timeout=30)
        it = pool.imap(tasks.sleep_then, [1], task_timeout=0.3)  # TypeError: sleep_then needs 2 args
        with pytest.raises(TypeError):
            next(it)
        with pytest.raises(TimeoutError):
            pool.map(tasks.sleep_forever, [1, 2], task_timeout=0.3)
        assert pool.map(tasks.square, range(4), task_timeout=30) == [0, 1, 4, 9]


def test_memory_hard_limit_kills_the_task_with_memory_limit_error(no_leaks):
    with shoal.Executor(1, max_memory_per_worker="200MB") as ex:
        with pytest.raises(shoal.MemoryLimitError, match="over the limit of 200 MiB"):
            ex.submit(tasks.allocate_mib, 600).result(timeout=60)
        assert ex.submit(tasks.square, 5).result(timeout=30) == 25


def test_memory_soft_limit_recycles_the_worker_after_its_task(no_leaks):
    # 850 MiB kept: above 80 % of the limit, and under it whatever the worker's
    # baseline (a fresh interpreter that imported the caller's main is bigger).
    with shoal.Executor(1, max_memory_per_worker="1GiB") as ex:
        first = ex.submit(tasks.allocate_mib, 850, True).result(timeout=60)
        second = ex.submit(tasks.allocate_mib, 1).result(timeout=60)
        assert first != second


def test_unpicklable_exception_arrives_as_remote_error(no_leaks):
    with shoal.Executor(1) as ex:
        with pytest.raises(shoal.RemoteError) as info:
            ex.submit(tasks.raise_unpicklable).result(timeout=30)
    err = info.value
    assert err.type_name == "Unpicklable" and err.message == "carries a lock"
    assert "raise_unpicklable" in err.traceback


def test_crashes_are_logged_with_the_signal_name(caplog, no_leaks):
    caplog.set_level(logging.DEBUG, logger="shoal")
    with shoal.Executor(1) as ex:
        with pytest.raises(shoal.WorkerLostError):
            ex.submit(tasks.kill_self_if, 1, {1}).result(timeout=30)
        ex.submit(tasks.square, 1).result(timeout=30)
    messages = [r.getMessage() for r in caplog.records if r.name == "shoal"]
    assert any("SIGKILL" in m and "replacement" in m for m in messages), messages
    assert any("started" in m for m in messages)


def _record_init(log, value):
    log.append(value)


def test_serial_mode_runs_inline_with_the_same_api():
    ran = []
    with shoal.Executor(start_method="inline", initializer=_record_init, initargs=(ran, "init")) as ex:
        assert ran == ["init"]  # the initializer runs, once, as in a worker
        assert ex.submit(tasks.worker_id_and_pid).result() == (None, os.getpid())
        assert list(ex.map(tasks.square, range(300))) == [x * x for x in range(300)]
        with pytest.raises(ValueError, match="bad item 3") as info:
            ex.submit(tasks.fail_on, 3).result()
        assert info.value.__traceback__ is not None  # the real traceback, for pdb.post_mortem
    with shoal.Pool(2, context=None, start_method="inline") as pool:
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
        assert sorted(pool.imap_unordered(tasks.square, range(10))) == sorted(x * x for x in range(10))
        assert pool.apply_async(tasks.add, (1, 2)).get() == 3


def test_serial_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("SHOAL_SERIAL", "1")
    with shoal.Executor(4) as ex:
        assert ex.submit(os.getpid).result() == os.getpid()


def _run_script(code, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(__file__), **kw)


def _read_line(proc, timeout=60):
    """The next line the script prints; kills it and fails the test if none comes within `timeout`."""
    if not select.select([proc.stdout], [], [], timeout)[0]:
        proc.kill()
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"the script printed nothing within {timeout} s: {err[-3000:]}")
    return proc.stdout.readline()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_worker_output_reaches_the_parent_line_by_line():
    proc = _run_script("""
        import shoal, tasks
        with shoal.Executor(2) as ex:
            list(ex.map(tasks.say, [f"line {i}" for i in range(20)], chunksize=1))
    """)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert sorted(out.splitlines()) == sorted(f"line {i}" for i in range(20))


def test_ctrl_c_during_map_stops_workers_without_waiting_for_their_tasks():
    # The tasks would run for an hour: the script ends within the wait below
    # only if Ctrl-C stopped the workers instead of waiting for them.
    proc = _run_script("""
        import os, sys, time, shoal, tasks
        try:
            with shoal.Executor(2) as ex:
                results = ex.map(tasks.sleep_then, range(100), [3600] * 100)
                while len(ex.worker_pids()) < 2:
                    time.sleep(0.01)
                print(" ".join(map(str, ex.worker_pids())), flush=True)
                list(results)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    try:
        pids = [int(p) for p in _read_line(proc).split()]
        assert len(pids) == 2
        # Its main thread waits in list(results) before the signal comes.
        assert wait_until_asleep(proc.pid), "the script's main thread never waited for the map's results"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failure: the workers go with their killed parent
            proc.kill()
            proc.communicate(timeout=60)
    assert "interrupted" in out, err
    assert not any(_alive(p) for p in pids)


def test_parent_killed_with_sigkill_takes_workers_along_and_segments_are_reclaimed():
    proc = _run_script("""
        import time, shoal, tasks
        ex = shoal.Executor(2)
        ex.submit(tasks.square, 1).result()
        while len(ex.worker_pids()) < 2:
            time.sleep(0.01)
        print(ex._runtime._engine.segment_name, *ex.worker_pids(), flush=True)
        time.sleep(60)
    """)
    name, *pids = _read_line(proc).split()
    assert os.path.exists(f"/dev/shm/{name}")
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 60  # a bound on the wait; they would live on forever
    while any(_alive(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(int(p)) for p in pids), "workers outlived their killed parent"
    checker = _run_script("import shoal")  # the next start reclaims the dead parent's segments
    checker.communicate(timeout=60)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_shutdown_without_waiting_cancels_the_queue_and_returns_before_the_running_tasks_end(no_leaks):
    ex = shoal.Executor(2)
    deadline = time.monotonic() + 60
    while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # both workers up: the two tasks below go one to each
    started, release = shoal.Semaphore(0), shoal.Event()
    running = [ex.submit(tasks.signal_then_wait_for_event, started, release) for _ in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(200)]
    assert started.acquire(timeout=60) and started.acquire(timeout=60)
    # Both run, and end only after release.set(): the queue waits.
    ex.shutdown(wait=False, cancel_futures=True)
    assert not any(f.done() for f in running)  # it returned without waiting for them
    release.set()
    assert [f.result(timeout=60) for f in running] == [True, True]  # running tasks finish
    # The result thread delivers the cancellations too: wait until each queued one is settled.
    assert not cf.wait(queued, timeout=60).not_done
    assert sum(f.cancelled() for f in queued) > 0
    for i, f in enumerate(queued):
        assert f.cancelled() or f.result(timeout=10) == i * i
    with pytest.raises(RuntimeError):
        ex.submit(tasks.square, 1)
    ex.shutdown(wait=True)  # the workers are gone within the no_leaks fixture's wait
