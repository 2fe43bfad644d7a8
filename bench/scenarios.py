"""The scenarios: each models a real workload, runs on one adapter, and
returns (canonical result, measures). The harness compares the canonical
result's digest with the serial run's; a mismatch is a failure, not a number.

Sizes are scaled to a 2-core machine; ``quick`` sizes only check results.
"""
from __future__ import annotations

import gc
import hashlib
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import work
from .peers import Adapter, Unsupported


@dataclass
class Measure:
    key: str
    label: str
    unit: str  # "s", "us", "MB", "x"
    lower_is_better: bool = True


@dataclass
class Scenario:
    name: str
    title: str
    measures: list
    run: Callable[[Adapter, dict, int], tuple]
    sizes: dict  # {"quick": {...}, "full": {...}}
    libs: Optional[list] = None  # None: every library
    fresh_process: bool = False  # must run first in a fresh process (start-up)
    serial_timed: bool = True  # False: serial's numbers mean nothing here (no pool to start, no round trip)
    note: str = ""
    issue: str = ""  # the pool issue's comparison this scenario answers
    extra: dict = field(default_factory=dict)


def digest(obj: Any) -> str:
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def _t() -> float:
    return time.perf_counter()


# -- 1. task overhead ----------------------------------------------------------------


def run_overhead(ad: Adapter, size: dict, workers: int) -> tuple:
    n = size["tasks"]
    items = list(range(n))
    m: dict = {}
    with ad.open() as pool:
        pool.call(work.tiny, 0)  # warm: workers up, function known
        try:
            t0 = _t()
            sub = pool.submit_all(work.tiny, items)
            m["submit_s"] = _t() - t0
            sub = sorted(sub)
        except Unsupported:
            sub = None
        t0 = _t()
        mapped = pool.map(work.tiny, items)
        m["map_s"] = _t() - t0
    expected_sub = sorted(mapped)
    if sub is not None and sub != expected_sub:
        return ("submit results differ from map results", sub[:5]), m
    return digest(mapped), m


# -- 2. round-trip latency -------------------------------------------------------------


def run_latency(ad: Adapter, size: dict, workers: int) -> tuple:
    n = size["round_trips"]
    with ad.open() as pool:
        for i in range(20):
            pool.call(work.echo, i)
        out, lat = [], []
        for i in range(n):
            t0 = time.perf_counter_ns()
            out.append(pool.call(work.echo, i))
            lat.append(time.perf_counter_ns() - t0)
    lat.sort()
    m = {
        "median_us": statistics.median(lat) / 1e3,
        "p99_us": lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1e3,
    }
    return digest(out), m


# -- 3. numerical computation on shared data -------------------------------------------


def run_shared_image(ad: Adapter, size: dict, workers: int) -> tuple:
    image = work.make_image(size["side"])
    ks = list(range(size["filters_per_worker"] * workers))
    t0 = _t()
    out = ad.share_filters(image, ks)
    m = {"time_s": _t() - t0}
    return digest(sorted(out)), m


# -- 4. stateful computation -----------------------------------------------------------


def run_prefixes(ad: Adapter, size: dict, workers: int) -> tuple:
    docs = work.make_documents(size["docs"], size["words"])
    t0 = _t()
    per_worker = ad.count_prefixes(docs)
    total: Counter = Counter()
    for counts in per_worker:
        total.update(counts)
    m = {"time_s": _t() - t0}
    return digest(sorted(total.items())), m


# -- 5. expensive initialisation ---------------------------------------------------------


def run_expensive_init(ad: Adapter, size: dict, workers: int) -> tuple:
    seeds = list(range(size["evaluations"]))
    t0 = _t()
    out = ad.evaluate_table(size["table_items"], seeds)
    m = {"time_s": _t() - t0}
    return digest(sorted(out)), m


# -- 6. load balancing --------------------------------------------------------------------


def pareto_durations(n: int, mean_s: float, seed: int = 6, shape: float = 1.5, cap: float = 100.0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    d = (rng.pareto(shape, size=n) + 1.0)
    d = np.minimum(d, cap)  # a cap (100x the minimum) keeps one task from being the makespan
    d = d * (mean_s / d.mean())
    return [float(x) for x in d]


def run_balance(ad: Adapter, size: dict, workers: int) -> tuple:
    durations = pareto_durations(size["tasks"], size["mean_s"])
    jobs = [[i, d] for i, d in enumerate(durations)]
    with ad.open() as pool:
        pool.call(work.echo, 0)
        t0 = _t()
        out = pool.map(work.busy_indexed, jobs)
        makespan = _t() - t0
    parallelism = 1 if ad.name == "serial" else workers
    ideal = sum(durations) / parallelism
    m = {"makespan_s": makespan, "ideal_s": ideal, "efficiency": ideal / makespan}
    return digest(out), m


# -- 7. large data ---------------------------------------------------------------------------


def run_large(ad: Adapter, size: dict, workers: int) -> tuple:
    import numpy as np

    n_tasks = size["tasks"]
    per = size["mib_per_task"] * (1 << 20) // 8
    arr = np.arange(n_tasks * per, dtype=np.int64)
    arr *= 2654435761
    arr &= 0xFFFFFF
    slices = [arr[i * per:(i + 1) * per] for i in range(n_tasks)]
    with ad.open() as pool:
        pool.call(work.echo, 0)
        t0 = _t()
        out = pool.map(work.transform_slice, slices)
        m = {"time_s": _t() - t0}
    canon = [(s, int(o.sum()), o.shape, str(o.dtype)) for s, o in out]
    del out, slices, arr
    gc.collect()
    return digest(canon), m


# -- 8. start-up and memory ---------------------------------------------------------------


def _tree(root: int) -> list:
    children: dict = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                s = f.read()
            ppid = int(s[s.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, ()):
            out.append(c)
            todo.append(c)
    return out


def _rss_pss_kb(pid: int) -> tuple:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def run_startup(ad: Adapter, size: dict, workers: int) -> tuple:
    t0 = _t()
    ad.session_start()
    pool = ad.open()
    first = pool.call(work.echo, 41)
    m = {"first_result_s": _t() - t0}
    try:
        time.sleep(size["idle_s"])  # idle: what the pool costs while waiting for work
        kids = _tree(os.getpid())
        rss = pss = 0
        for pid in kids:
            r, p = _rss_pss_kb(pid)
            rss += r
            pss += p
        m["idle_rss_per_worker_mb"] = rss / 1024 / workers
        m["idle_pss_per_worker_mb"] = pss / 1024 / workers
        m["processes"] = len(kids)
    finally:
        pool.close()
    if ad.pools_carry_state and ad.name != "serial":
        # Most programs that use a pool have imported numpy, whose BLAS may start
        # threads at import: start a second pool after that.
        m["numpy_imported_before"] = float("numpy" in sys.modules)
        import numpy  # noqa: F401

        t0 = _t()
        with ad.open() as pool:
            pool.call(work.echo, 1)
            m["first_result_numpy_s"] = _t() - t0
    return digest(first), m


# -- the pool issue's comparisons ---------------------------------------------------------------


def run_submit_many(ad: Adapter, size: dict, workers: int) -> tuple:
    items = list(range(size["tasks"]))
    with ad.open() as pool:
        pool.call(work.tiny, 0)
        t0 = _t()
        out = pool.submit_all(work.tiny, items)
        el = _t() - t0
    return digest(sorted(out)), {"time_s": el, "tasks_per_s": len(items) / el}


def run_map_many(ad: Adapter, size: dict, workers: int) -> tuple:
    items = list(range(size["items"]))
    if ad.name == "shoal":
        import shoal

        # The comparison is Pool.map against Pool.map.
        with shoal.Pool(workers) as pool:
            pool.apply(work.square, (0,))
            t0 = _t()
            out = pool.map(work.square, items)
            el = _t() - t0
    else:
        with ad.open() as pool:
            pool.call(work.square, 0)
            t0 = _t()
            out = pool.map(work.square, items)
            el = _t() - t0
    return digest(out), {"time_s": el, "items_per_s": len(items) / el}


def _timed_map(ad: Adapter, fn: Callable, jobs: list) -> tuple:
    """(digest, {"time_s"}) of one map over ``jobs`` on a warm pool."""
    with ad.open() as pool:
        pool.call(work.echo, 0)
        t0 = _t()
        out = pool.map(fn, jobs)
        el = _t() - t0
    return digest(out), {"time_s": el}


def run_cpu_bound(ad: Adapter, size: dict, workers: int) -> tuple:
    return _timed_map(ad, work.busy_indexed, [[i, size["task_s"]] for i in range(size["tasks"])])


def run_matmul(ad: Adapter, size: dict, workers: int) -> tuple:
    import numpy  # noqa: F401 - imported before the pool, as programs that use numpy do

    return _timed_map(ad, work.matmul_indexed, [[i, size["side"], size["products"]] for i in range(size["tasks"])])


S = Scenario
SCENARIOS: list = [
    S("startup", "8. Start-up: pool creation to first result; memory", [
        Measure("first_result_s", "pool start to first result", "s"),
        Measure("first_result_numpy_s", "same, after import numpy", "s"),
        Measure("peak_rss_mb", "peak RSS, process tree (sum)", "MB"),
        Measure("idle_rss_per_worker_mb", "idle RSS per worker", "MB"),
        Measure("idle_pss_per_worker_mb", "idle PSS per worker", "MB"),
    ], run_startup, {"quick": {"idle_s": 0.2}, "full": {"idle_s": 0.5}}, fresh_process=True, serial_timed=False,
        note="Timed from creating the pool (Ray: ray.init; Dask: LocalCluster + Client) to the first "
             "result. Peak RSS sums the resident set of the benchmark process and all its descendants "
             "(sampled every 20 ms from /proc; shared pages count once per process). Idle RSS/PSS per "
             "worker: all descendant processes (helpers included) after 0.5 s idle, divided by the workers. "
             "'After import numpy': a second pool, started once the process has imported numpy (as "
             "most programs that use a pool have).",
        issue="e"),
    S("overhead", "1. Task overhead: 5,000 tiny tasks (a few µs each)", [
        Measure("submit_s", "submit + as_completed", "s"),
        Measure("map_s", "map", "s"),
    ], run_overhead, {"quick": {"tasks": 500}, "full": {"tasks": 5_000}},
        note="submit + as_completed where the library has futures (multiprocessing.Pool and mpire: "
             "apply_async with a callback; joblib: return_as='generator_unordered'; Ray: ray.wait). "
             "map with each library's default chunking (Dask and Ray: 4 batches per worker, as their "
             "guides advise against tiny tasks)."),
    S("latency", "2. Round-trip latency of one tiny task", [
        Measure("median_us", "median", "us"),
        Measure("p99_us", "p99", "us"),
    ], run_latency, {"quick": {"round_trips": 50}, "full": {"round_trips": 500}}, serial_timed=False,
        note="Sequential round trips: submit one task, wait for its result.", issue="a"),
    S("shared_image", "3. Numerical computation on shared data (image filters)", [
        Measure("time_s", "10 filters per worker over one shared image", "s"),
    ], run_shared_image, {"quick": {"side": 500, "filters_per_worker": 2},
                          "full": {"side": 5000, "filters_per_worker": 10}},
        note="One 5000x5000 float32 image (100 MB), numpy box/gradient filters over the whole image. "
             "Sharing in each library's documented way: shoal with the natural code, the same image in "
             "every item of one map (`ex.map(f, [image] * n, ks)`: copied into its shared-memory arena "
             "once for the map); shoal+SA with a `shoal.share()`d SharedArray (the copy is timed); "
             "shoal+fork as multiprocessing users write it (`shoal.Pool(start_method='fork')` and the "
             "initializer); multiprocessing.Pool, "
             "ProcessPoolExecutor and loky through the initializer (fork inherits it; loky pickles it "
             "once per worker); joblib memory-maps it; mpire shared_objects; Dask scatter(broadcast=True); "
             "Ray put. Timed from pool creation (cluster start excluded for Dask and Ray)."),
    S("prefixes", "4. Stateful computation (word-prefix counts, worker-local state)", [
        Measure("time_s", "count and merge", "s"),
    ], run_prefixes, {"quick": {"docs": 200, "words": 200}, "full": {"docs": 2_000, "words": 500}},
        note="Each worker keeps its own Counter (initializer/global; mpire worker_state + worker_exit; "
             "Ray actors; Dask client.run), merged in the parent at the end. 2,000 documents of 500 "
             "words, counted with the library's map (Dask and Ray: 4 batches per worker). Timed from "
             "pool creation (cluster start excluded for Dask and Ray)."),
    S("expensive_init", "5. Expensive initialisation (a lookup table per worker)", [
        Measure("time_s", "build once per worker, evaluate many times", "s"),
    ], run_expensive_init, {"quick": {"table_items": 500_000, "evaluations": 200},
                            "full": {"table_items": 6_250_000, "evaluations": 2_000}},
        note="A 50 MB table (sorted, prefix-summed random int64) built once per worker via the "
             "initializer (mpire worker_init; joblib and Dask lazily in a global; Ray actors), then "
             "2,000 evaluations of 2,000 lookups each (Dask and Ray: 4 batches per worker). Timed from "
             "pool creation (cluster start excluded for Dask and Ray)."),
    S("balance", "6. Load balancing (heavy-tailed task durations)", [
        Measure("makespan_s", "makespan", "s"),
        Measure("efficiency", "ideal / makespan", "x", lower_is_better=False),
    ], run_balance, {"quick": {"tasks": 200, "mean_s": 0.0005}, "full": {"tasks": 2_000, "mean_s": 0.002}},
        note="2,000 busy-wait tasks (each burns a given amount of CPU time), Pareto(1.5) durations "
             "capped at 100x the minimum, mean 2 ms; map with default chunking. Ideal = total work / "
             "workers."),
    S("large_data", "7. Large data (256 MiB in, 64 x 4 MiB out)", [
        Measure("time_s", "64 slices of 4 MiB in, 64 arrays of 4 MiB out", "s"),
    ], run_large, {"quick": {"tasks": 16, "mib_per_task": 1}, "full": {"tasks": 64, "mib_per_task": 4}},
        note="map over 64 int64 slices of 4 MiB; each task sums its slice and returns a transformed "
             "4 MiB copy. joblib memory-maps the slices (its default for arrays over 1 MB)."),
    S("submit_100k", "(b) 100,000 tiny tasks by submit + as_completed", [
        Measure("time_s", "submit + as_completed", "s"),
        Measure("tasks_per_s", "throughput", "tasks/s", lower_is_better=False),
    ], run_submit_many, {"quick": {"tasks": 2_000}, "full": {"tasks": 100_000}},
        libs=["serial", "shoal", "ProcessPoolExecutor"], issue="b"),
    S("map_1m", "(c) map of x*x over 1,000,000 items", [
        Measure("time_s", "Pool.map", "s"),
        Measure("items_per_s", "throughput", "items/s", lower_is_better=False),
    ], run_map_many, {"quick": {"items": 20_000}, "full": {"items": 1_000_000}},
        libs=["serial", "shoal", "multiprocessing.Pool"], issue="c",
        note="shoal.Pool.map against multiprocessing.Pool.map, both with their default chunking, "
             "of `x * x` over range(1,000,000) (the README's example): the work is next to nothing, so "
             "this measures what each pool costs per item."),
    S("cpu_10ms", "(d) CPU-bound tasks of 10 ms: speed-up over serial", [
        Measure("time_s", "100 tasks of 10 ms", "s"),
    ], run_cpu_bound, {"quick": {"tasks": 10, "task_s": 0.002}, "full": {"tasks": 100, "task_s": 0.010}},
        libs=["serial", "shoal", "multiprocessing.Pool", "ProcessPoolExecutor", "loky"], issue="d",
        note="Each task burns 10 ms of CPU time (busy wait on the thread's CPU clock); map with default "
             "chunking. Speed-up = serial time / pool time."),
    S("matmul", "(f) Matrix products with default settings (BLAS threads per worker)", [
        Measure("time_s", "products of 384x384 matrices", "s"),
    ], run_matmul, {"quick": {"tasks": 4, "side": 64, "products": 2},
                    "full": {"tasks": 32, "side": 384, "products": 20}},
        libs=["serial", "shoal", "multiprocessing.Pool", "ProcessPoolExecutor", "loky", "joblib"],
        note="32 tasks of 20 products of two 384x384 float64 matrices (numpy's BLAS), numpy imported "
             "before the pool starts, every library at its defaults: shoal and joblib (its loky "
             "backend's inner_max_num_threads) give each worker's BLAS its share of the cores "
             "(cores / workers threads); multiprocessing.Pool, ProcessPoolExecutor and loky's "
             "reusable executor leave every worker's BLAS at one thread per core of the machine. "
             "Serial: one process whose BLAS uses every core."),
]
BY_NAME = {s.name: s for s in SCENARIOS}
