"""A pool's stats block as users see it: ``stats()``, ``insights()``, the
reader other processes use (shoal.obs.list_pools / read_pool), and the
engine's log records with their pool, worker and job.

Every number asserted here is one the test itself caused (tasks run, tasks
that raised, a worker killed), never a timing.
"""
from __future__ import annotations

import logging
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shoal
from shoal.obs import StatsError, list_pools, read_pool

import tasks


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_stats_count_what_ran_what_raised_and_keep_its_traceback(no_leaks):
    with shoal.Executor(2) as ex:
        futures = [ex.submit(tasks.fail_on, i, bad=7) for i in range(40)]
        assert sum(f.exception() is not None for f in futures) == 1
        assert sorted(ex.map(tasks.square, range(100), chunksize=10)) == sorted(x * x for x in range(100))
        snap = ex.stats()
    assert snap.kind == "Executor" and snap.pid == os.getpid() and snap.workers == 2
    assert snap.submitted == 40 + 10 and snap.completed == 50 and snap.failed == 0 and snap.ended == 50
    assert snap.tasks_completed == 39 + 100 and snap.tasks_failed == 1
    assert snap.pending == 0 and snap.in_flight == 0
    assert sum(w.jobs_completed for w in snap.worker_stats) == 50
    assert sum(sum(w.duration_buckets) for w in snap.worker_stats) == 140
    errors = [e for w in snap.worker_stats for e in w.recent_errors]
    assert len(errors) == 1 and "ValueError: bad item 7" in errors[0].text and "Traceback" in errors[0].text
    busy = sum(w.busy_s for w in snap.worker_stats)
    assert busy > 0 and all(w.deserialize_s + w.serialize_s <= w.busy_s + 1e-3 for w in snap.worker_stats)
    assert all(w.bytes_in > 0 and w.bytes_out > 0 for w in snap.worker_stats if w.jobs_completed)


def test_big_buffers_are_counted_as_arena_bytes_both_ways(no_leaks):
    np = pytest.importorskip("numpy")
    with shoal.Executor(1) as ex:
        assert ex.submit(tasks.identity, np.zeros(1 << 20)).result().nbytes == 8 << 20
        assert ex.submit(tasks.square, 5).result() == 25
        w = ex.stats().worker_stats[0]
    assert w.arena_bytes_in == 8 << 20 and w.arena_bytes_out == 8 << 20
    assert 0 < w.bytes_in < 1 << 20  # the pickles themselves stay small


def test_a_running_task_and_its_worker_are_visible_while_it_runs(no_leaks, tmp_path):
    with shoal.Executor(1) as ex:
        fut = ex.submit(tasks.sleep_then, 1, 3.0)
        assert _wait_for(lambda: ex.stats().worker_stats[0].state == "running")
        w = ex.stats().worker_stats[0]
        assert w.pid in ex.worker_pids() and w.job > 0 and w.running_for_s is not None
        assert w.rss_bytes > 0 and w.alive_s > 0
        assert fut.result() == 1
        assert _wait_for(lambda: ex.stats().worker_stats[0].state == "idle")
        assert ex.stats().worker_stats[0].running_for_s is None


def test_a_killed_worker_counts_as_a_restart_with_its_cause(no_leaks):
    with shoal.Executor(2) as ex:
        assert ex.submit(tasks.kill_self_if, 1, [1]).exception() is not None
        assert _wait_for(lambda: ex.stats().workers_started >= 3)
        snap = ex.stats()
    assert snap.workers_lost == 1 and snap.failed == 1 and snap.restarts == 1
    slot = next(w for w in snap.worker_stats if w.restarts)
    assert slot.restart_causes == {"signal": 1} and slot.last_exit == "killed by SIGKILL"


def test_another_process_reads_the_pool_while_this_ones_python_is_stuck(no_leaks):
    reader = textwrap.dedent(
        """
        import sys, time
        from shoal.obs import list_pools
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pools = list_pools(int(sys.argv[1]))
            if pools and pools[0].tasks_completed >= 20:
                print(pools[0].kind, pools[0].workers, pools[0].tasks_completed, flush=True)
                sys.exit(0)
            time.sleep(0.05)
        sys.exit(1)
        """
    )
    with shoal.Executor(2) as ex:
        list(ex.map(tasks.square, range(20), chunksize=1))
        child = subprocess.Popen([sys.executable, "-c", reader, str(os.getpid())], stdout=subprocess.PIPE, text=True)
        try:
            # This thread holds the GIL in a busy loop: the reader needs nothing from it.
            deadline = time.monotonic() + 30
            while child.poll() is None and time.monotonic() < deadline:
                pass
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, out
    kind, workers, done = out.split()
    assert kind == "Executor" and workers == "2" and int(done) >= 20


def test_list_pools_finds_this_processes_pools_and_forgets_closed_ones(no_leaks):
    with shoal.Executor(1) as ex, shoal.Pool(2) as pool:
        mine = {p.name: p for p in list_pools(os.getpid())}
        assert ex.stats().name in mine and pool.stats().name in mine
        assert {mine[ex.stats().name].kind, mine[pool.stats().name].kind} == {"Executor", "Pool"}
        assert list_pools(os.getpid() + 1_000_000) == []
        name = ex.stats().name
    assert name not in {p.name for p in list_pools(os.getpid())}
    with pytest.raises(StatsError, match="gone"):
        read_pool(name)


def test_a_block_of_another_layout_version_or_no_block_gives_a_one_line_error(no_leaks):
    with pytest.raises(StatsError) as not_a_pool:
        read_pool("shoal-1-0000000000000000")
    assert "\n" not in str(not_a_pool.value)
    with shoal.Executor(1) as ex:
        name = ex.stats().name
        with open(f"/dev/shm/{name}", "r+b") as f, mmap.mmap(f.fileno(), 16) as m:
            version = m[8:12]
            m[8:12] = (int.from_bytes(version, "little") + 1).to_bytes(4, "little")  # as a newer shoal's
            try:
                with pytest.raises(StatsError, match="another version of shoal") as other:
                    read_pool(name)
                assert "\n" not in str(other.value)
                assert name not in {p.name for p in list_pools(os.getpid())}  # skipped, not an error
            finally:
                m[8:12] = version
        assert read_pool(name).workers == 1


def test_insights_show_shares_percentiles_slowest_tasks_and_hints(no_leaks):
    with shoal.Executor(2) as ex:
        list(ex.map(tasks.sleep_then, range(8), [0.05] * 8, chunksize=1))
        assert ex.submit(tasks.sleep_then, "the-slow-one", 0.3).result() == "the-slow-one"
        insights = ex.insights()
    text = str(insights)
    assert len(insights.workers) == 2 and all(0 <= w.working <= 1 and 0 <= w.waiting <= 1 for w in insights.workers)
    assert insights.percentiles["p50"] is not None and insights.percentiles["p99"] >= insights.percentiles["p50"]
    slot, slowest = insights.slowest[0]
    assert "'the-slow-one'" in slowest.args and slowest.duration_s >= 0.3
    assert "the-slow-one" in text and "slowest tasks" in text and "worker" in text
    assert not any("too small" in h for h in insights.hints), insights.hints


def test_a_slow_tasks_arguments_are_shown_without_running_their_repr(no_leaks, capfd):
    with shoal.Executor(1) as ex:
        assert ex.submit(tasks.value_after, tasks.LoudRepr(7), 0.05).result() == 7
        slowest = ex.stats().worker_stats[0].slowest
    assert slowest and slowest[0].args == "(<tasks.LoudRepr object>, 0.05)"
    assert "__repr__ ran" not in capfd.readouterr().out


def test_insights_say_when_tasks_are_too_small_for_the_pool(no_leaks):
    with shoal.Executor(2) as ex:
        for f in [ex.submit(tasks.square, i) for i in range(3000)]:
            f.result()
        insights = ex.insights()
    hint = next((h for h in insights.hints if "too small" in h), None)
    assert hint is not None and "map()" in hint, insights.hints
    assert "too small" in str(insights)


def test_engine_log_records_carry_pool_worker_and_job(no_leaks, caplog):
    caplog.set_level(logging.WARNING, logger="shoal")
    with shoal.Executor(1) as ex:
        fut = ex.submit(tasks.kill_self_if, 5, [5])
        assert fut.exception() is not None
        name = ex.stats().name
        assert _wait_for(lambda: any(getattr(r, "worker", None) == 0 for r in caplog.records))
    record = next(r for r in caplog.records if getattr(r, "worker", None) == 0)
    assert record.pool == name and record.job == fut._job_id
    assert "SIGKILL" in record.getMessage()


def test_serial_mode_stats_are_a_snapshot_too():
    with shoal.Executor(start_method="inline") as ex:
        assert ex.submit(tasks.square, 3).result() == 9
        snap = ex.stats()
    assert snap.submitted == 1 and snap.workers == 0 and snap.label == "serial"
    assert ex.dashboard_url is None
