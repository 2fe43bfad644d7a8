"""Busy processes that keep CPUs loaded while the benchmark measures (``--load N``).

Real servers run loaded: a pool that only looks fast on an idle machine (idle
CPUs to spin on, wake-ups that never wait for a CPU) can look very different
when other work competes for every core. ``busy_cpus(N)`` starts one CPU-burning
process per N CPUs this process may use, each pinned to its own CPU, and stops
them when the block ends, so every library is measured under the same load.

The busy processes are plain ``python -c`` processes (not forks of the harness,
which may have imported the libraries under test). They must never outlive the
harness: the block kills and reaps them on exit (also on Ctrl-C or an
exception), an atexit hook catches what a block could not, and each one asks
the kernel to kill it when its parent dies (PR_SET_PDEATHSIG) and checks that
its parent is still there every few milliseconds, for the case that the
parent died before the prctl took effect.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
from typing import Iterator, Optional

#: in every busy process's command line (``pgrep -f bench-busy-cpu`` finds them)
TAG = "bench-busy-cpu"

# Ignores SIGINT: Ctrl-C in a terminal reaches the whole process group, and the
# harness, not the busy process, decides when the load ends (it kills them).
_BUSY = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[2])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
while os.getppid() == parent:
    for _ in range(100000):
        pass
"""

_live: set = set()  # busy processes started and not yet reaped, for the atexit hook


def plan_cpus(per_cpus: int, allowed: Optional[set] = None) -> list:
    """The CPUs ``busy_cpus(per_cpus)`` loads: every per_cpus-th CPU of the
    allowed set (this process's affinity by default) in order, one per
    per_cpus CPUs rounded down but at least one; none for per_cpus 0."""
    if per_cpus < 0:
        raise ValueError(f"per_cpus must be 0 (off) or positive, not {per_cpus}")
    if per_cpus == 0:
        return []
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    return cpus[::per_cpus][:max(1, len(cpus) // per_cpus)]


def describe(per_cpus: int, cpus: list) -> str:
    """E.g. "1 busy process pinned to CPU 0 (one per 2 CPUs)", for headings."""
    if not cpus:
        return "no busy processes"
    n = len(cpus)
    return (f"{n} busy process{'es' if n > 1 else ''} pinned to CPU{'s' if n > 1 else ''} "
            f"{', '.join(map(str, cpus))} (one per {'CPU' if per_cpus == 1 else f'{per_cpus} CPUs'})")


@contextlib.contextmanager
def busy_cpus(per_cpus: int) -> Iterator[list]:
    """Keeps ``plan_cpus(per_cpus)`` busy for the duration of the block and
    yields that list (empty, and nothing started, for 0). Enter it from a
    thread that outlives the block (the main one): the kernel's
    parent-death signal follows the thread that started the process."""
    cpus = plan_cpus(per_cpus)
    procs: list = []
    try:
        for cpu in cpus:
            proc = subprocess.Popen([sys.executable, "-c", _BUSY, TAG, str(os.getpid())],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True)
            procs.append(proc)
            _live.add(proc)
            os.sched_setaffinity(proc.pid, {cpu})
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"busy process {proc.pid} exited at once (rc={proc.returncode})")
        yield cpus
    finally:
        _stop(procs)


def _stop(procs) -> None:
    """Kills and reaps ``procs``; reports (does not hang on) one that will not go."""
    for proc in procs:
        try:
            proc.kill()
        except OSError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print(f"bench.load: busy process {proc.pid} did not exit after SIGKILL", file=sys.stderr)
        _live.discard(proc)


@atexit.register
def _stop_live() -> None:
    _stop(list(_live))
