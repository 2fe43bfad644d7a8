"""``python -m shoal demo``: a CPU-bound job run serially, with multiprocessing,
with concurrent.futures and with shoal, side by side, with a check that every
run computed the same answer."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import platform
import statistics
import time
from typing import Callable, Optional

import shoal
from shoal.runtime.options import default_workers


def count_primes(bounds: tuple[int, int]) -> int:
    """Primes in [lo, hi) by trial division: honest pure-Python CPU work."""
    lo, hi = bounds
    count = 0
    for n in range(max(lo, 2), hi):
        if n < 4:
            count += 1
            continue
        if n % 2 == 0:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def tiny(x: int) -> int:
    return x


def _ranges(limit: int, pieces: int) -> list[tuple[int, int]]:
    step = -(-limit // pieces)
    return [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]


def _timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def _round_trip_us(submit_and_wait: Callable[[int], object], n: int) -> float:
    """The median of n round trips: a few slow ones (a wake-up after the
    CPU-bound part, the machine's other work) would sway a mean."""
    submit_and_wait(0)  # warm
    trips = []
    for i in range(n):
        start = time.perf_counter()
        submit_and_wait(i)
        trips.append(time.perf_counter() - start)
    return statistics.median(trips) * 1e6


def main(quick: bool = False) -> int:
    workers = default_workers()
    limit = 300_000 if quick else 1_200_000
    work = _ranges(limit, 400)
    trips = 200 if quick else 2000
    print(f"shoal demo: counting primes below {limit:,} in {len(work)} tasks on {workers} workers")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}\n")

    rows: list[tuple[str, float, Optional[float], object]] = []
    serial_time, expected = _timed(lambda: sum(map(count_primes, work)))
    rows.append(("serial (one core)", serial_time, None, expected))

    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers) as pool:
        t, got = _timed(lambda: sum(pool.map(count_primes, work)))
        trip = _round_trip_us(lambda i: pool.apply(tiny, (i,)), trips)
    rows.append(("multiprocessing.Pool", t, trip, got))

    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        t, got = _timed(lambda: sum(ex.map(count_primes, work)))
        ppe_trip = _round_trip_us(lambda i: ex.submit(tiny, i).result(), trips)
    rows.append(("ProcessPoolExecutor", t, ppe_trip, got))

    with shoal.Executor(workers) as shoal_ex:
        t, got = _timed(lambda: sum(shoal_ex.map(count_primes, work)))
        shoal_trip = _round_trip_us(lambda i: shoal_ex.submit(tiny, i).result(), trips)
        insights = shoal_ex.insights()  # what the pool's stats block saw (docs/observability.md)
    rows.append(("shoal.Executor", t, shoal_trip, got))

    print(f"{'':22} {'wall time':>10} {'speed-up':>9} {'round trip (median)':>20}  result")
    for name, seconds, row_trip, result in rows:
        trip_text = f"{row_trip:8.0f} us" if row_trip is not None else "-"
        print(f"{name:22} {seconds:9.2f}s {serial_time / seconds:8.2f}x {trip_text:>20}  {result}")
    agree = all(r[3] == expected for r in rows)
    print("\nall results agree" if agree else "\nRESULTS DISAGREE")
    print(f"shoal's round trip is {ppe_trip / shoal_trip:.1f}x faster than ProcessPoolExecutor's")
    print("\nwhat shoal's pool saw (ex.insights(); live: python -m shoal top):")
    print(insights)
    return 0 if agree else 1
