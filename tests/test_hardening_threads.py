"""Faults on the pool's own threads and in its fork server never end the
process or leave a caller waiting.

A fault that concerns one task (its result, spilled into a shared-memory
segment of its own, was removed before the pool could read it) fails that
task and is logged; the pool goes on. A fault that leaves nothing sane (an
error on the engine or supervisor thread, a fork server that keeps dying)
breaks the pool with a BrokenPoolError that says what happened: every waiter
gets it, later submits raise it, and shutdown returns.

Faults that cannot be provoked on demand from outside are injected through
the engine's test-only hook (``Engine._inject_fault``). Every wait has a
timeout: the bugs this guards against are hangs and aborts.
"""
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shoal
import tasks


def big_text(n):
    """A result whose pickle (a str, never an out-of-band buffer) is n bytes and more."""
    return "x" * n


def shut_down_within(ex, seconds=30):
    """Shuts ex down in a thread; False if that did not return in time."""
    t = threading.Thread(target=ex.shutdown, daemon=True)
    t.start()
    t.join(timeout=seconds)
    return not t.is_alive()


def wait_for_record(caplog, text, timeout=30):
    """The first "shoal" log record containing `text`, waiting for the result
    thread to pass it on (None if none came in time)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if record.name == "shoal" and text in record.getMessage():
                return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_result_whose_segment_vanished_fails_only_its_task(start_method, caplog, no_leaks):
    caplog.set_level(logging.DEBUG, logger="shoal")
    with shoal.Executor(1, start_method=start_method) as ex:
        n = 2 * ex._runtime.inline_payload_limit  # travels in a segment of its own
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9
        ex._runtime._engine._inject_fault("lose_next_spilled_result")
        lost = ex.submit(big_text, n)
        with pytest.raises(shoal.WorkerLostError, match="the task ran, but its result was lost") as info:
            lost.result(timeout=60)
        assert "does not exist" in str(info.value)
        record = wait_for_record(caplog, "its result was lost")
        assert record is not None and record.levelno == logging.WARNING
        # The pool goes on, big results included.
        assert len(ex.submit(big_text, n).result(timeout=60)) == n
        assert ex.submit(tasks.square, 4).result(timeout=60) == 16


def test_result_whose_segment_vanished_fails_its_map_chunk_only(no_leaks):
    with shoal.Pool(2) as pool:
        n = 2 * pool._runtime.inline_payload_limit
        pool._runtime._engine._inject_fault("lose_next_spilled_result")
        with pytest.raises(shoal.WorkerLostError, match="result was lost"):
            pool.map(big_text, [n], chunksize=1)
        assert [len(s) for s in pool.map(big_text, [n, 10], chunksize=1)] == [n, 10]


@pytest.mark.parametrize("fault, thread", [("engine_thread_throws", "engine"), ("supervisor_thread_throws", "supervisor")])
def test_error_on_a_pool_thread_breaks_the_pool_and_wakes_every_waiter(fault, thread, caplog, no_leaks):
    caplog.set_level(logging.DEBUG, logger="shoal")
    ex = shoal.Executor(2)
    try:
        assert ex.submit(tasks.square, 2).result(timeout=60) == 4
        running = [ex.submit(tasks.sleep_then, i, 60) for i in range(2)]
        queued = [ex.submit(tasks.square, i) for i in range(5)]
        ex._runtime._engine._inject_fault(fault)
        for fut in running + queued:
            with pytest.raises(shoal.BrokenPoolError, match=f"internal error on the pool's {thread} thread"):
                fut.result(timeout=60)
        with pytest.raises(shoal.BrokenPoolError, match=f"{thread} thread"):
            ex.submit(tasks.square, 1)
        record = wait_for_record(caplog, f"internal error on the pool's {thread} thread")
        assert record is not None and record.levelno == logging.ERROR
    finally:
        assert shut_down_within(ex), "shutdown hung after the fault"


def test_error_on_the_engine_thread_fails_a_pool_map(no_leaks):
    pool = shoal.Pool(2)
    try:
        result = pool.starmap_async(tasks.sleep_then, [(i, 60) for i in range(4)], chunksize=1)
        pool._runtime._engine._inject_fault("engine_thread_throws")
        with pytest.raises(shoal.BrokenPoolError, match="engine thread"):
            result.get(timeout=60)
    finally:
        pool.terminate()
        t = threading.Thread(target=pool.join, daemon=True)
        t.start()
        t.join(timeout=30)
        assert not t.is_alive(), "join hung after the fault"


def test_unknown_fault_name_is_refused():
    with shoal.Executor(1) as ex:
        with pytest.raises(ValueError):
            ex._runtime._engine._inject_fault("no such fault")


# ---- fork servers that keep dying (each in a process of its own: they change the environment)

SCRIPT = textwrap.dedent(
    r'''
    import os
    import select
    import signal
    import sys
    import threading

    import shoal

    def pids():
        return os.getppid(), os.getpid()

    def wait_gone(pid):
        fd = os.pidfd_open(pid)
        try:
            if not select.select([fd], [], [], 30)[0]:
                print(f"FAIL: process {pid} outlived SIGKILL")
                os._exit(1)
        finally:
            os.close(fd)

    def square(x):
        return x * x

    def shut_down(ex):
        t = threading.Thread(target=ex.shutdown, daemon=True)
        t.start()
        t.join(timeout=30)
        return not t.is_alive()

    def expect_broken(fut):
        try:
            fut.result(timeout=60)
        except shoal.BrokenPoolError as e:
            print("broken:", e)
            return
        except TimeoutError:
            print("FAIL: the task waited for a fork server that never came")
            os._exit(1)
        print("FAIL: the task ran")
        os._exit(1)

    scenario = sys.argv[1]
    if scenario == "cannot-start":
        # A fresh interpreter that cannot start: a fork server dies at once, every time.
        os.environ["PYTHONHOME"] = "/nonexistent"
        hold = threading.Event()  # another thread: the fork server is a fresh interpreter
        threading.Thread(target=hold.wait, args=(120,), daemon=True).start()
        ex = shoal.Executor(1, start_method="forkserver")
        expect_broken(ex.submit(square, 3))
        hold.set()
    else:  # "killed": the first server (forked from here) works, its replacements cannot start
        ex = shoal.Executor(1, start_method="forkserver")
        server, worker = ex.submit(pids).result(timeout=60)
        assert server != os.getpid()
        os.environ["PYTHONHOME"] = "/nonexistent"
        os.kill(server, signal.SIGKILL)
        wait_gone(worker)  # it dies with its server: the next task cannot reach it
        expect_broken(ex.submit(square, 3))
    try:
        ex.submit(square, 4)
    except shoal.BrokenPoolError as e:
        print("submit refused:", e)
    else:
        print("FAIL: a submit to the broken pool was accepted")
        os._exit(1)
    if not shut_down(ex):
        print("FAIL: shutdown hung")
        os._exit(1)
    print("OK")
    '''
)


@pytest.mark.parametrize("scenario", ["cannot-start", "killed"])
def test_fork_server_that_keeps_dying_breaks_the_pool(scenario, tmp_path):
    script = tmp_path / "fork_server_dies.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), scenario], capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0 and "OK" in out, out + proc.stderr[-3000:]
    assert "broken: the fork server keeps dying" in out, out
    assert "exited with code 1" in out, out
    assert "submit refused: the fork server keeps dying" in out, out
