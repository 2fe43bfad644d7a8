"""Timelines: ``shoal.trace(path)`` and ``Executor(trace=path)`` write Chrome
trace JSON (what Perfetto and chrome://tracing open) of real pools: a track
per worker process, a complete event per task with its phases, a flow from
each submit to its task's start, counters for the pending queue and the arena.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import pytest

import shoal

import tasks


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tasks(trace):
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "task"]


def test_a_trace_has_a_track_per_worker_every_task_its_phases_and_flows(no_leaks, tmp_path):
    path = tmp_path / "run.json"
    with shoal.Executor(2) as ex:
        with shoal.trace(path):
            futures = [ex.submit(tasks.fail_on, i, bad=3) for i in range(30)]
            assert sum(f.exception() is not None for f in futures) == 1
            assert list(ex.map(tasks.square, range(50), chunksize=5)) == [x * x for x in range(50)]
            pids = set(ex.worker_pids())
    trace = _load(path)
    assert trace["otherData"]["dropped_events"] == 0
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert names[os.getpid()].startswith("shoal pool")
    workers = {pid for pid, name in names.items() if name.startswith("shoal worker")}
    assert workers == pids
    ran = _tasks(trace)
    assert len(ran) == 30 + 10 and {e["pid"] for e in ran} <= workers
    assert Counter(e["args"]["status"] for e in ran) == {"ok": 39, "raised": 1}
    assert sorted(e["args"]["items"] for e in ran) == [1] * 30 + [5] * 10
    # Each task's phases lie within it, on its track.
    phases = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "phase"]
    assert {e["name"] for e in phases} >= {"load arguments", "call", "send result"}
    # A flow from each submit (the parent's track) to the task's start (its worker's).
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
    assert set(starts) == set(ends) == {e["args"]["job"] for e in ran}
    for job, end in ends.items():
        assert starts[job]["pid"] == os.getpid() and end["pid"] in workers
        assert starts[job]["ts"] <= end["ts"]
    counters = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert counters == {"pending jobs", "arena bytes"}


def test_an_executors_own_trace_is_written_when_it_shuts_down(no_leaks, tmp_path):
    path = tmp_path / "own.json"
    ex = shoal.Executor(2, trace=str(path))
    assert list(ex.map(tasks.square, range(20), chunksize=1)) == [x * x for x in range(20)]
    ex.shutdown(wait=True)
    assert len(_tasks(_load(path))) == 20


def test_a_pool_made_inside_a_trace_is_recorded_and_only_work_inside_it(no_leaks, tmp_path):
    path = tmp_path / "inside.json"
    with shoal.trace(path):
        with shoal.Pool(1) as pool:
            assert pool.map(tasks.square, range(6), chunksize=2) == [x * x for x in range(6)]
    with shoal.Pool(1) as pool:  # after the trace: not in it
        pool.map(tasks.square, range(6))
    assert len(_tasks(_load(path))) == 3


def test_bad_trace_requests_fail_at_once_with_a_clear_error(no_leaks, tmp_path):
    with pytest.raises(FileNotFoundError):
        with shoal.trace(tmp_path / "no-such-dir" / "run.json"):
            pass
    with shoal.trace(tmp_path / "a.json"):
        with pytest.raises(RuntimeError, match="already recording"):
            with shoal.trace(tmp_path / "b.json"):
                pass
    with pytest.raises(TypeError, match="trace must be a file path"):
        shoal.Executor(1, trace=3)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        shoal.Executor(1, trace=str(tmp_path / "no-such-dir" / "x.json"))
