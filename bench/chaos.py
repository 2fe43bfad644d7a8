"""Crash recovery benchmarks: ``python -m bench.chaos [--quick]``.

1. Recovery time: a busy worker is killed with SIGKILL; its task (retries=1)
   restarts on the replacement. Measured from the kill to the task's restart,
   median over 50 kills.
2. The chaos workload: 2,000 tasks of which a random 5 % kill their own worker
   (on their first run only), under shoal (retries=3), ProcessPoolExecutor,
   loky and Pebble, counting the correct results each library delivered.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time

import shoal

from .chaos_tasks import doubled_or_die_once, start_time_after_busy


def recovery_times(kills: int) -> list[float]:
    times = []
    with shoal.Executor(2) as ex:
        for _ in range(kills):
            fut = ex.with_options(retries=1).submit(start_time_after_busy, 0.2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # wait until a worker is running it
                pids = ex.worker_pids()
                if ex.stats().in_flight and pids:
                    break
                time.sleep(0.001)
            time.sleep(0.02)
            victim = _running_worker(ex)
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            started, pid = fut.result(timeout=30)
            if pid != victim and started >= killed_at:
                times.append(started - killed_at)
    return times


def _running_worker(ex) -> int:
    # The busiest worker is the one with CPU time growing; with one task in
    # flight, sample /proc for the worker that is running (state R).
    for pid in ex.worker_pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "R":
                    return pid
        except OSError:
            pass
    return ex.worker_pids()[0]


def _prepare(n: int, share: float, seed: int) -> tuple[str, set[int]]:
    marker_dir = tempfile.mkdtemp(prefix="shoal-chaos-")
    doomed = set(random.Random(seed).sample(range(n), int(n * share)))
    for x in doomed:
        open(os.path.join(marker_dir, f"{x}.doomed"), "w").close()
    return marker_dir, doomed


def _count_correct(futures: dict, timeout: float) -> tuple[int, str]:
    good, errors = 0, {}
    for x, fut in futures.items():
        try:
            if fut.result(timeout=timeout) == 2 * x:
                good += 1
        except BaseException as exc:  # noqa: BLE001 - counted by type
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    return good, ", ".join(f"{n}x {name}" for name, n in sorted(errors.items()))


def chaos_run(library: str, n: int) -> tuple[int, str, float]:
    marker_dir, _ = _prepare(n, 0.05, seed=42)
    start = time.perf_counter()
    try:
        if library == "shoal":
            with shoal.Executor(2) as ex:
                futs = {x: ex.with_options(retries=3).submit(doubled_or_die_once, x, marker_dir) for x in range(n)}
                good, errs = _count_correct(futs, 120)
        elif library == "ProcessPoolExecutor":
            with cf.ProcessPoolExecutor(2) as ex:
                futs = {}
                for x in range(n):
                    try:
                        futs[x] = ex.submit(doubled_or_die_once, x, marker_dir)
                    except cf.process.BrokenProcessPool:
                        break  # the pool refuses new work once broken
                good, errs = _count_correct(futs, 120)
                errs += f"; {n - len(futs)} never accepted" if len(futs) < n else ""
        elif library == "loky":
            import loky

            ex = loky.get_reusable_executor(max_workers=2)
            futs = {x: ex.submit(doubled_or_die_once, x, marker_dir) for x in range(n)}
            good, errs = _count_correct(futs, 120)
            ex.shutdown(wait=True)
        elif library == "pebble":
            import pebble

            with pebble.ProcessPool(max_workers=2) as pool:
                futs = {x: pool.schedule(doubled_or_die_once, args=(x, marker_dir)) for x in range(n)}
                good, errs = _count_correct(futs, 120)
        else:
            raise ValueError(library)
    except ImportError:
        return -1, "not installed", 0.0
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)
    return good, errs, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--quick", action="store_true", help="small sizes, checks only")
    args = parser.parse_args(argv)
    kills = 5 if args.quick else 50
    n = 200 if args.quick else 2000

    times = recovery_times(kills)
    print(f"## Recovery after SIGKILL of a busy worker ({len(times)} of {kills} kills measured)\n")
    print("| median | p90 | max |\n|---|---|---|")
    q = sorted(times)
    print(f"| {statistics.median(q) * 1e3:.1f} ms | {q[int(0.9 * (len(q) - 1))] * 1e3:.1f} ms | {q[-1] * 1e3:.1f} ms |\n")

    print(f"## Chaos: {n} tasks, 5 % kill their own worker once\n")
    print("| library | correct results | errors | wall time |\n|---|---|---|---|")
    ok = True
    for library in ("shoal", "ProcessPoolExecutor", "loky", "pebble"):
        good, errs, wall = chaos_run(library, n)
        shown = "not installed" if good < 0 else f"{good} / {n}"
        print(f"| {library} | {shown} | {errs or '-'} | {wall:.2f} s |")
        if library == "shoal":
            ok = good == n
    return 0 if ok and len(times) >= kills // 2 else 1


if __name__ == "__main__":
    sys.exit(main())
