"""bench/load.py's busy processes (``python -m bench --load N``) load the CPUs
they claim, and none outlives its block, an exception in it, or the harness.

No timing thresholds: a busy process counts as running once its CPU time
grows, however slowly the shared machine lets it; every wait is a bounded
poll. The busy processes live for well under a second each on an idle machine.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the bench package lives at the repository root

from bench.load import TAG, busy_cpus, plan_cpus  # noqa: E402

TIMEOUT = 30.0


def _stat(pid: int):
    """The fields of /proc/<pid>/stat after the command name, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _is_busy(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) busy process (the tag guards against a reused pid)."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return TAG.encode() in f.read()
    except OSError:
        return False


def _busy_children(parent: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[1] == str(parent) and _is_busy(int(entry)):
                found.append(int(entry))
    return found


def _utime(pid: int) -> int:
    fields = _stat(pid)
    assert fields is not None, f"busy process {pid} is gone"
    return int(fields[11])  # field 14 of stat: user-mode CPU time in clock ticks


def _wait_for(cond, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def _wait_gone(pids: list) -> None:
    _wait_for(lambda: not any(_is_busy(p) for p in pids), f"busy processes {pids} to be gone")


def test_plan_takes_every_nth_allowed_cpu():
    assert plan_cpus(0) == []
    assert plan_cpus(1, {0, 1}) == [0, 1]
    assert plan_cpus(2, {0, 1}) == [0]
    assert plan_cpus(3, {0, 1}) == [0]  # fewer CPUs than N: still one
    assert plan_cpus(2, {0, 1, 2, 3, 4}) == [0, 2]  # rounded down
    assert plan_cpus(2, {7, 1, 5, 3}) == [1, 5]  # the allowed CPUs in order, not 0..n-1
    with pytest.raises(ValueError):
        plan_cpus(-1)
    with busy_cpus(0) as cpus:
        assert cpus == []
        assert _busy_children(os.getpid()) == []


def test_one_busy_process_per_cpu_pinned_and_running():
    allowed = sorted(os.sched_getaffinity(0))
    with busy_cpus(1) as cpus:
        assert cpus == allowed
        pids = _busy_children(os.getpid())
        assert len(pids) == len(allowed), pids
        pinned = {pid: os.sched_getaffinity(pid) for pid in pids}
        assert all(len(c) == 1 for c in pinned.values()), pinned
        assert sorted(cpu for c in pinned.values() for cpu in c) == allowed, pinned  # each its own CPU
        start = {pid: _utime(pid) for pid in pids}
        _wait_for(lambda: all(_utime(pid) > start[pid] for pid in pids), "every busy process to use CPU time")
    _wait_gone(pids)


def test_an_exception_in_the_block_still_stops_them():
    with pytest.raises(RuntimeError, match="boom"):
        with busy_cpus(1):
            pids = _busy_children(os.getpid())
            assert pids
            raise RuntimeError("boom")
    _wait_gone(pids)


def test_busy_process_dies_with_a_killed_harness():
    # A stand-in harness holding one busy process is SIGKILLed (no finally, no
    # atexit): the kernel's parent-death signal must take the busy process too.
    code = ("import sys; from bench.load import busy_cpus\n"
            f"with busy_cpus({len(os.sched_getaffinity(0))}):\n"
            "    print('ready', flush=True)\n"
            "    sys.stdin.read()\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    harness = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([harness.stdout], [], [], TIMEOUT)
        assert ready and harness.stdout.readline().strip() == "ready"
        pids = _busy_children(harness.pid)
        assert len(pids) == 1, pids
    finally:
        harness.send_signal(signal.SIGKILL)
        harness.wait(timeout=TIMEOUT)
    _wait_gone(pids)  # reparented: a zombie until its new parent reaps it counts as gone
