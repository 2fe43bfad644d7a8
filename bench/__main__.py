"""``python -m bench``: shoal side by side with the other Python process pools.

    python -m bench                 # full run: 5 repeats, 2 workers, writes docs/
    python -m bench --quick         # every scenario once at small sizes: results checked only
    python -m bench --workers 1,2,4 --scenarios cpu_10ms,balance   # a scaling run
    python -m bench --libs shoal,ProcessPoolExecutor --scenarios latency
    python -m bench --report bench/results/latest-full.json        # re-render docs from saved results
    python -m bench --load 2 --scenarios latency,submit_100k --libs shoal,ProcessPoolExecutor

--load N measures under load: one busy process per N usable CPUs (bench/load.py),
each pinned to its own CPU, for the whole run. A loaded run is kept apart from the
idle ones: it writes bench/results/<time>-<kind>-loaded.json (and
latest-<kind>-loaded.json) and does not write docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from .harness import run_suite
from .load import describe, plan_cpus
from .peers import DEFAULT_LIBS, STDLIB
from .report import console_summary, render, write_doc, write_images
from .scenarios import SCENARIOS

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _csv(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every scenario once at small sizes; check results only")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per scenario (default 5; quick: 1)")
    ap.add_argument("--workers", default="2", help="worker counts, e.g. 1,2,4,8,16 (default 2)")
    ap.add_argument("--libs", default=None, help="comma-separated libraries (default: all): " + ",".join(DEFAULT_LIBS))
    ap.add_argument("--scenarios", default=None,
                    help="comma-separated scenarios (default: all): " + ",".join(s.name for s in SCENARIOS))
    ap.add_argument("--limit", type=float, default=None, help="seconds per library and scenario (default 120; quick 40)")
    ap.add_argument("--out", default=None, help="raw results JSON (default bench/results/<time>-<kind>.json; "
                                                "loaded: <time>-<kind>-loaded.json)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md and docs/img/")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="keep one busy process per N usable CPUs running, each pinned to its own CPU "
                         "(default 0: off); implies --no-docs")
    ap.add_argument("--report", nargs="+", metavar="JSON",
                    help="only render docs from saved results (a main run, optionally a scaling run)")
    args = ap.parse_args(argv)

    if args.report:
        runs = [json.load(open(p)) for p in args.report]
        main_run = next(r for r in runs if len(r["workers"]) == 1)
        scaling = next((r for r in runs if len(r["workers"]) > 1), None)
        _docs(main_run, scaling)
        return 0

    libs = _csv(args.libs) if args.libs else list(DEFAULT_LIBS)
    unknown = [lib for lib in libs if lib not in DEFAULT_LIBS]
    if unknown:
        ap.error(f"unknown libraries: {unknown}")
    if "serial" not in libs:
        libs.insert(0, "serial")  # the reference every result is checked against
    names = _csv(args.scenarios) if args.scenarios else [s.name for s in SCENARIOS]
    known = {s.name for s in SCENARIOS}
    if any(n not in known for n in names):
        ap.error(f"unknown scenarios: {[n for n in names if n not in known]}")
    workers = [int(w) for w in _csv(args.workers)]
    repeats = args.repeats or (1 if args.quick else 5)
    limit = args.limit or (40.0 if args.quick else 120.0)
    if args.load < 0:
        ap.error("--load must be 0 (off) or a positive number of CPUs per busy process")

    t0 = time.monotonic()
    print(f"bench: {'quick' if args.quick else 'full'} run, libraries {', '.join(libs)}; workers {workers}; "
          f"{repeats} repeat(s); limit {limit:.0f} s per library and scenario"
          + (f"; loaded: {describe(args.load, plan_cpus(args.load))}" if args.load else ""), flush=True)
    result = run_suite(libs, names, workers, repeats, args.quick, limit, log=lambda m: print(m, flush=True),
                       load_per_cpus=args.load)

    kind = result["kind"] if len(workers) == 1 else "scaling"
    if args.load:
        kind += "-loaded"  # never latest-full.json: that is the docs' idle main run
    os.makedirs(RESULTS, exist_ok=True)
    out = args.out or os.path.join(RESULTS, time.strftime("%Y%m%d-%H%M%S") + f"-{kind}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    if not args.out and not args.no_docs:
        # latest-*.json are what the docs render from (a scaling run joins
        # the latest main run): a partial --no-docs run must not replace them.
        shutil.copyfile(out, os.path.join(RESULTS, f"latest-{kind}.json"))
    print()
    print(console_summary(result))
    print(f"\nraw results: {out}")

    if args.load and not args.quick and not args.no_docs:
        print("loaded run: docs/benchmarks.md not written (it shows the idle runs)")
    elif not args.quick and not args.no_docs:
        if kind == "scaling":
            main_path = os.path.join(RESULTS, "latest-full.json")
            if os.path.exists(main_path):
                _docs(json.load(open(main_path)), result)
        else:
            scaling_path = os.path.join(RESULTS, "latest-scaling.json")
            scaling = json.load(open(scaling_path)) if os.path.exists(scaling_path) else None
            _docs(result, scaling)
    print(f"bench: done in {time.monotonic() - t0:.0f} s")
    bad = [r for r in result["records"] if r["status"] == "wrong"]
    if args.quick:  # shoal and the stdlib pools must get every scenario right
        bad += [r for r in result["records"] if r["lib"] in ("serial", "shoal") + STDLIB and r["status"] != "ok"]
    for r in bad:
        print(f"FAILED: {r['lib']} / {r['scenario']}: {r['status']} {r.get('error', '')[:300]}")
    return 1 if bad else 0


def _docs(main_run: dict, scaling) -> None:
    images = write_images(main_run, scaling)
    write_doc(render(main_run, scaling, images))
    print("wrote docs/benchmarks.md (pools section) and docs/img/bench_pools*.png")


if __name__ == "__main__":
    sys.exit(main())
