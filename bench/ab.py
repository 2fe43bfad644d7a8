"""``python -m bench.ab``: two builds of shoal side by side, interleaved, on the hot path.

    python -m bench.ab BEFORE_PKG AFTER_PKG [--repeats 7] [--before-env K=V ...] [--after-env K=V ...]

The two sides may be one build under two settings: the cost of the stats
block is ``python -m bench.ab build/dev/pkg build/dev/pkg --before-env
SHOAL_STATS=0``, of a trace ``--after-env SHOAL_BENCH_TRACE=/tmp/t.json``
(the figures then run inside ``shoal.trace()``).

Each ``*_PKG`` is a directory that holds an importable ``shoal`` package (a dev
build's ``build/dev/pkg``, or a checkout of an older commit built there). For
each repeat, each figure is measured once per build, in alternating order, each
in a fresh process, so that drift in the machine's load hits both alike:

* ``round_trip_us``: median of 2,000 sequential ``submit(f).result()`` of a tiny task;
* ``submits_per_s``: 100,000 ``submit`` then ``as_completed`` over them;
* ``map_1m_ms``: ``Pool.map`` of ``x * x`` over ``range(1_000_000)``.

Prints each build's median [min-max] per figure and the after/before ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
from concurrent.futures import as_completed
import contextlib, os
import shoal
from bench.work import square
what = sys.argv[1]
trace_path = os.environ.get("SHOAL_BENCH_TRACE")
recording = shoal.trace(trace_path) if trace_path else contextlib.nullcontext()
with shoal.Executor(2) as ex, recording:
    for _ in range(200):
        ex.submit(square, 3).result()  # workers up, function sent, spins warm
    if what == "round_trip_us":
        times = []
        for i in range(2000):
            t = time.perf_counter()
            ex.submit(square, i).result()
            times.append(time.perf_counter() - t)
        times.sort()
        value = times[len(times) // 2] * 1e6
    elif what == "submits_per_s":
        t = time.perf_counter()
        futures = [ex.submit(square, i) for i in range(100_000)]
        total = sum(f.result() for f in as_completed(futures))
        value = 100_000 / (time.perf_counter() - t)
        assert total == sum(i * i for i in range(100_000))
if what == "map_1m_ms":
    with shoal.Pool(2) as pool, (shoal.trace(trace_path) if trace_path else contextlib.nullcontext()):
        pool.map(square, range(1000))
        t = time.perf_counter()
        out = pool.map(square, range(1_000_000))
        value = (time.perf_counter() - t) * 1e3
        assert out[-1] == 999_999 ** 2
print(json.dumps(value))
"""

FIGURES = ("round_trip_us", "submits_per_s", "map_1m_ms")


def _measure(pkg: str, figure: str, extra_env: dict | None = None) -> float:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg, root]), **(extra_env or {}))
    out = subprocess.run([sys.executable, "-c", _CHILD, figure], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--before-env", action="append", default=[], metavar="K=V", help="environment of the before side")
    ap.add_argument("--after-env", action="append", default=[], metavar="K=V", help="environment of the after side")
    ap.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES), help="measure only these")
    args = ap.parse_args(argv)
    envs = {side: dict(kv.split("=", 1) for kv in getattr(args, f"{side}_env")) for side in ("before", "after")}
    figures = tuple(args.figures)
    runs: dict = {(b, f): [] for b in ("before", "after") for f in figures}
    for rep in range(args.repeats):
        order = ("before", "after") if rep % 2 == 0 else ("after", "before")
        for figure in figures:
            for build in order:
                runs[(build, figure)].append(_measure(getattr(args, build), figure, envs[build]))
    print(f"{'figure':16} {'before: median [min-max]':30} {'after: median [min-max]':30} after/before")
    for figure in figures:
        cells = []
        for build in ("before", "after"):
            xs = runs[(build, figure)]
            cells.append(f"{statistics.median(xs):10.1f} [{min(xs):.1f}-{max(xs):.1f}]")
        ratio = statistics.median(runs[("after", figure)]) / statistics.median(runs[("before", figure)])
        print(f"{figure:16} {cells[0]:30} {cells[1]:30} {ratio:.3f}")
    print(json.dumps({f"{b}:{f}": v for (b, f), v in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
