"""Turns raw results into tables (Markdown), plots (PNG) and the pools
section of docs/benchmarks.md."""
from __future__ import annotations

import datetime
import os
import statistics
from typing import Any, Optional

from .load import describe
from .peers import DEFAULT_LIBS, STDLIB
from .scenarios import BY_NAME, SCENARIOS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
IMG = os.path.join(ROOT, "docs", "img")
BEGIN, END = "<!-- pools:begin -->", "<!-- pools:end -->"

SHORT = {
    "multiprocessing.Pool": "mp.Pool",
    "ProcessPoolExecutor": "PPE",
    "shoal+SharedArray": "shoal+SA",
    "shoal+fork": "shoal+fork",
}

#: The pool issue's targets: (scenario, measure, peer, target factor, what the factor means)
TARGETS = [
    ("a", "latency", "median_us", "ProcessPoolExecutor", 5.0,
     "single tiny task round trip (median): shoal's latency this many times lower"),
    ("b", "submit_100k", "time_s", "ProcessPoolExecutor", 10.0,
     "100,000 tiny tasks by submit + as_completed: shoal's throughput this many times higher"),
    ("c", "map_1m", "time_s", "multiprocessing.Pool", 1.5,
     "map of x*x over 1,000,000 items, default chunking: shoal this many times faster"),
    ("d", "cpu_10ms", "time_s", "serial", 1.9,
     "CPU-bound 10 ms tasks on 2 workers: speed-up over serial"),
    ("e", "startup", "first_result_s", "ProcessPoolExecutor", 2.0,
     "pool start to first result, 2 workers: shoal this many times faster"),
]

#: Why shoal loses where it does, from profiling (py-spy) and micro-measurements
#: of the shoal tree this suite was run against. Keyed by scenario, (scenario,
#: measure) or "target-<tag>".
_SHARED_IMAGE = (
    "Cause: fork inheritance through the initializer (mp.Pool, PPE, shoal+fork) costs nothing up front: "
    "the workers read the caller's own pages. shoal+SharedArray first copies the 100 MB image into shared "
    "memory (`shoal.share()`, ~56 ms, inside the timing); the filters then run as fast on the shared "
    "mapping as on numpy's own array on the AMD host (49 against 50 ms per filter in one process; 95 "
    "against 91 ms on the Intel host, where 4 KiB shared pages cost more than numpy's huge pages: this "
    "kernel gives shared memory none). The shoal row (the natural `map(f, [image] * n, ks)`) copies the "
    "image once per map and maps it once per task. The first pool to run after a pause pays for fresh "
    "memory: a new process's first filters take 250-400 ms instead of 41-50 ms (no compaction stalls in "
    "/proc/vmstat; whichever library runs first pays), and the same work's busy time per worker varies "
    "550-730 ms from run to run, so differences under ~20 % are noise here."
)
CAUSES: dict = {
    ("startup", "first_result_s"): (
        "Cause: shoal's fast start forks its fork server from the caller, which it does only while no "
        "other Python thread runs; otherwise it starts a fresh interpreter as fork server (~0.3 s). "
        "Until 6d3564b any native thread (numpy's OpenBLAS pool) forced the slow path, and for a while "
        "`import shoal` itself imported numpy, so every start paid ~0.3 s."),
    ("startup", "first_result_numpy_s"): (
        "Cause: see the row above: with a Python thread running before the pool, shoal starts a fresh "
        "interpreter as its fork server."),
    ("startup", "peak_rss_mb"): (
        "Cause: shoal runs one more process than the stdlib pools, its fork server, and loads its C++ "
        "extension and cloudpickle in it and in every worker; RSS counts the pages they share once per "
        "process."),
    ("startup", "idle_rss_per_worker_mb"): (
        "Cause: the sum includes shoal's fork server, a third process with 2 workers: a forked copy of "
        "the caller, so its RSS is about the caller's. Each shoal worker alone is as lean as a PPE "
        "worker (2026-12-04: 1.9 MB of private dirty pages against PPE's 3.5 MB). The fork server is "
        "kept on purpose: it is what replaces a crashed worker from a copy of the caller taken while no "
        "other thread ran (see 'The rows a peer still won', item 2, below)."),
    ("startup", "idle_pss_per_worker_mb"): "Cause: as for RSS above: the fork server's share.",
    ("overhead", "submit_s"): (
        "Cause: joblib's `return_as='generator_unordered'` batches tasks automatically "
        "(`batch_size='auto'`), so it never pays per task; shoal sends one job per `submit` and builds a "
        "real `concurrent.futures.Future` for each (see (b) for what that costs). Per future the caller "
        "spends ~5.4 µs of CPU under the GIL (submit, the stdlib's as_completed, completing the "
        "future) and the workers ~4 µs, so on 2 CPUs shoal's floor is ~24 ms for the 5,000 "
        "('The rows a peer still won', item 5, below)."),
    ("overhead", "map_s"): (
        "Cause: 5,000 tasks of a few µs take tens of ms in every pool that chunks: the differences "
        "here are per-map constants (shoal starts with small chunks, 1, 2, 4, ..., until it has "
        "measured the task time) and run-to-run noise."),
    "shared_image": _SHARED_IMAGE,
    "large_data": (
        "Cause: 64 slices of 4 MiB go in and 64 arrays of 4 MiB come back through the arena, one copy "
        "each way; the differences to the winner are within this machine's noise."),
    "expensive_init": (
        "Cause: pool creation is inside the timing (the initializer is part of it); when shoal's "
        "start takes the slow path (a fresh interpreter as fork server, see start-up) it costs ~0.3 s, "
        "where multiprocessing.Pool/PPE fork the caller in milliseconds and joblib reuses loky workers "
        "that are already running (and builds the table lazily in them)."),
    "matmul": (
        "Cause: none left to shoal: shoal and joblib (loky's inner_max_num_threads) both give each "
        "worker's BLAS cores / workers threads and land within noise of each other (a few percent); "
        "the pools that leave every worker's BLAS at one thread per core are 2.5-5x slower."),
    "prefixes": (
        "Cause: pool creation and the per-worker flush are inside the timing; the counting itself runs "
        "at the same speed in every pool, and differences of a few percent are this machine's noise."),
    "balance": (
        "Cause: shoal sizes a map's chunks from the measured task time, up to ~50 ms of work while "
        "much remains, shrinking to ~5 ms and single items near the end; what is left is the caller's "
        "own CPU per chunk (~30 ms over the map, on the two CPUs the workers need) and the longest "
        "task (up to 77 ms), which no chunking can split. Differences under ~2 % are within this "
        "machine's noise."),
    "target-a": (
        "Cause: a round trip is one ring hop each way: the caller blocked in `result()` drains the "
        "workers' outboxes itself (`Engine::wait_for`), and both sides poll for a short adaptive "
        "budget before sleeping, so on an idle machine nobody pays a wake-up. Under load the "
        "polls shrink and wake-ups (5-60 µs on this VM) come back."),
    "target-b": (
        "Cause: the GIL. Per task the caller holds it ~3.5 µs in `Executor.submit` (a "
        "`concurrent.futures.Future`, pickling the arguments, the engine call) and ~2 µs in "
        "`as_completed`, and the result thread ~2.3 µs (unpickling, `set_result`, as_completed's "
        "waiter): ~8 µs of Python per task serialised by one lock, on the two cores the workers also "
        "need. ProcessPoolExecutor's own time varies between 10 and 15 s from run to run on this VM, "
        "and with it the ratio. What is left is mostly the stdlib's Future and as_completed, which "
        "shoal must use (they are the API)."),
    "target-c": (
        "Cause: object creation. Both pools must build every item and every result as a Python "
        "object on each side of the pipe (~30 ns each on this VM, with page faults for fresh "
        "memory); shoal sends numbers as columns, runs chunks at C speed and keeps the workers' heap "
        "warm, which leaves that creation and the workers' `x * x` as the floor, on 2 cores shared "
        "by the caller's result thread and both workers."),
    "target-d": (
        "Cause: none specific to shoal: on 2 cores the caller, the result thread and the machine's other "
        "load take CPU from the two workers, and multiprocessing.Pool and ProcessPoolExecutor land at "
        "the same speed-up within noise (each task burns 10 ms of CPU time, so stolen CPU shows)."),
    "target-e": "Cause: see start-up above.",
}


# -- aggregation ------------------------------------------------------------------------------


def aggregate(result: dict) -> dict:
    """{(scenario, workers, lib): {"status", "error", "n", "m": {key: (median, lo, hi, n)}}}"""
    out: dict = {}
    for r in result["records"]:
        key = (r["scenario"], r["workers"], r["lib"])
        a = out.setdefault(key, {"status": "ok", "error": "", "values": {}, "n": 0, "version": ""})
        a["version"] = r.get("version") or a["version"]
        st = r["status"]
        if st == "ok":
            a["n"] += 1
            for k, v in (r.get("metrics") or {}).items():
                a["values"].setdefault(k, []).append(v)
        else:
            rank = {"wrong": 4, "timeout": 3, "error": 2, "n/a": 1}
            if rank.get(st, 0) >= rank.get(a["status"], 0):
                a["status"] = st
                a["error"] = r.get("error", "")
    for a in out.values():
        a["m"] = {k: (statistics.median(v), min(v), max(v), len(v)) for k, v in a["values"].items()}
        if a["status"] == "ok" and a["n"] == 0:
            a["status"] = "error"
    return out


def libs_in(result: dict) -> list:
    seen = list(result["libs"])
    return [lib for lib in DEFAULT_LIBS if lib in seen] + [lib for lib in seen if lib not in DEFAULT_LIBS]


def cell_status(result: dict, agg: dict, scenario: str, workers: int, lib: str) -> Optional[str]:
    """None when there are numbers; otherwise the word to show."""
    if lib in result.get("lib_status", {}):
        why = result["lib_status"][lib]
        return "missing" if why.startswith("missing") else "n/a"
    a = agg.get((scenario, workers, lib))
    if a is None:
        return "—"
    if a["status"] == "wrong":
        return "**WRONG**"
    if a["status"] in ("timeout", "error"):
        return f"**{a['status']}**"
    if a["status"] == "n/a":
        return "n/a"
    return None


def fmt(v: float, unit: str) -> str:
    if unit == "s":
        if v >= 100:
            return f"{v:.0f} s"
        if v >= 1:
            return f"{v:.2f} s"
        if v >= 0.001:
            return f"{v * 1e3:.1f} ms"
        return f"{v * 1e6:.0f} µs"
    if unit == "us":
        if v >= 1000:
            return f"{v / 1e3:.2f} ms"
        return f"{v:.0f} µs"
    if unit == "MB":
        return f"{v:.0f} MB"
    if unit == "x":
        return f"{v:.2f}"
    if unit.endswith("/s"):
        if v >= 1e6:
            return f"{v / 1e6:.2f}M/s"
        if v >= 1e3:
            return f"{v / 1e3:.1f}k/s"
        return f"{v:.0f}/s"
    return f"{v:.3g} {unit}"


def ratio(lib_v: float, shoal_v: float, lower_is_better: bool) -> Optional[float]:
    """How many times shoal's cost the library's is (>1: shoal ahead)."""
    if not lib_v or not shoal_v:
        return None
    return lib_v / shoal_v if lower_is_better else shoal_v / lib_v


def _measures(sc) -> list:
    return list(sc.measures)


def _value(agg, scenario, workers, lib, key):
    a = agg.get((scenario, workers, lib))
    if not a or a["status"] != "ok" or key not in a["m"]:
        return None
    return a["m"][key]


# -- Markdown -------------------------------------------------------------------------------------


def correctness_table(result: dict, agg: dict, workers: int) -> str:
    libs = libs_in(result)
    lines = ["| scenario | " + " | ".join(SHORT.get(lib, lib) for lib in libs) + " |",
             "|---|" + "---|" * len(libs)]
    for sc in SCENARIOS:
        if sc.name not in result["scenarios"]:
            continue
        cells = []
        for lib in libs:
            st = cell_status(result, agg, sc.name, workers, lib)
            if st is None:
                a = agg[(sc.name, workers, lib)]
                st = "correct" if lib == "serial" or a["status"] == "ok" else a["status"]
            cells.append(st)
        lines.append(f"| {sc.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(result: dict, agg: dict, workers: int) -> str:
    libs = libs_in(result)
    lines = ["| scenario / measure | " + " | ".join(SHORT.get(lib, lib) for lib in libs) + " |",
             "|---|" + "---:|" * len(libs)]
    for sc in SCENARIOS:
        if sc.name not in result["scenarios"]:
            continue
        for ms in _measures(sc):
            shoal = _value(agg, sc.name, workers, "shoal", ms.key)
            cells = []
            for lib in libs:
                st = cell_status(result, agg, sc.name, workers, lib)
                if st is not None:
                    cells.append(st)
                    continue
                v = _value(agg, sc.name, workers, lib, ms.key)
                if lib == "serial" and not sc.serial_timed:
                    cells.append("—")
                    continue
                if v is None:
                    cells.append("n/a")
                    continue
                text = fmt(v[0], ms.unit)
                if lib not in ("shoal", "serial") and shoal is not None:
                    r = ratio(v[0], shoal[0], ms.lower_is_better)
                    if r is not None:
                        text += f" ×{r:.2g}" if r < 10 else f" ×{r:.0f}"
                if lib == "shoal":
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {sc.title.split(' ', 1)[0]} {ms.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_tables(result: dict, agg: dict, workers: int) -> str:
    out = []
    for sc in SCENARIOS:
        if sc.name not in result["scenarios"]:
            continue
        out.append(f"#### {sc.title}\n")
        if sc.note:
            out.append(sc.note + "\n")
        head = "| library | " + " | ".join(f"{m.label}: median [min–max]" for m in sc.measures) + " | vs shoal | runs |"
        out.append(head)
        out.append("|---|" + "---:|" * len(sc.measures) + "---:|---:|")
        for lib in libs_in(result):
            from .harness import runs

            if not runs(lib, sc):
                continue
            st = cell_status(result, agg, sc.name, workers, lib)
            a = agg.get((sc.name, workers, lib))
            if lib == "serial" and not sc.serial_timed and st is None:
                out.append("| serial | (the reference result only) |" + " |" * len(sc.measures) + " |")
                continue
            if st is not None:
                why = ""
                if a and a.get("error"):
                    why = " " + a["error"].replace("|", "/").replace("\n", " ")[:160]
                elif lib in result.get("lib_status", {}):
                    why = " " + result["lib_status"][lib].replace("|", "/")[:120]
                out.append(f"| {lib} | {st}{why} |" + " |" * len(sc.measures) + " |")
                continue
            cells = []
            for ms in sc.measures:
                v = a["m"].get(ms.key)
                cells.append("n/a" if v is None else f"{fmt(v[0], ms.unit)} [{fmt(v[1], ms.unit)}–{fmt(v[2], ms.unit)}]")
            first = sc.measures[0]
            shoal = _value(agg, sc.name, workers, "shoal", first.key)
            v = a["m"].get(first.key)
            r = ratio(v[0], shoal[0], first.lower_is_better) if (v and shoal) else None
            rtxt = "" if r is None or lib == "shoal" else f"×{r:.2f}"
            out.append(f"| {lib} | " + " | ".join(cells) + f" | {rtxt} | {a['n']} |")
        out.append("")
    return "\n".join(out)


def targets_table(result: dict, agg: dict, workers: int) -> tuple:
    lines = ["| | comparison | shoal | peer | factor | target | met |", "|---|---|---:|---:|---:|---:|:---:|"]
    misses = []
    for tag, scen, key, peer, target, what in TARGETS:
        if scen not in result["scenarios"]:
            continue
        unit = next(m.unit for m in BY_NAME[scen].measures if m.key == key)
        s = _value(agg, scen, workers, "shoal", key)
        p = _value(agg, scen, workers, peer, key)
        if s is None or p is None:
            st = cell_status(result, agg, scen, workers, "shoal" if s is None else peer) or "n/a"
            lines.append(f"| ({tag}) | {what} (vs {peer}) | {fmt(s[0], unit) if s else st} | "
                         f"{fmt(p[0], unit) if p else st} | — | {target}x | — |")
            continue
        factor = p[0] / s[0]
        ok = factor >= target
        if not ok:
            misses.append((tag, what, factor, target))
        extra = ""
        if tag == "e":
            rss = _value(agg, scen, workers, "shoal", "idle_rss_per_worker_mb")
            pss = _value(agg, scen, workers, "shoal", "idle_pss_per_worker_mb")
            prss = _value(agg, scen, workers, peer, "idle_rss_per_worker_mb")
            if rss and prss:
                extra = (f"; idle RSS per worker: shoal {rss[0]:.0f} MB (PSS {pss[0]:.0f} MB), "
                         f"{peer} {prss[0]:.0f} MB")
        lines.append(f"| ({tag}) | {what} (vs {peer}){extra} | {fmt(s[0], unit)} | {fmt(p[0], unit)} | "
                     f"{factor:.2f}x | {target}x | {'yes' if ok else '**no**'} |")
    return "\n".join(lines), misses


def losses(result: dict, agg: dict, workers: int) -> list:
    """(scenario, measure, best lib, its value, shoal's value, unit) where shoal is not fastest."""
    out = []
    for sc in SCENARIOS:
        if sc.name not in result["scenarios"]:
            continue
        for ms in sc.measures:
            if ms.key in ("peak_rss_mb", "idle_pss_per_worker_mb", "ideal_s", "tasks_per_s", "items_per_s"):
                continue
            s = _value(agg, sc.name, workers, "shoal", ms.key)
            if s is None:
                continue
            best = None
            for lib in libs_in(result):
                if lib in ("shoal", "serial", "shoal+SharedArray", "shoal+fork"):
                    continue
                v = _value(agg, sc.name, workers, lib, ms.key)
                if v is None:
                    continue
                better = v[0] < s[0] if ms.lower_is_better else v[0] > s[0]
                if better and (best is None or (v[0] < best[1] if ms.lower_is_better else v[0] > best[1])):
                    best = (lib, v[0])
            if best is not None:
                out.append((sc, ms, best[0], best[1], s[0]))
    return out


def load_note(result: dict) -> str:
    """The heading's "Loaded: ..." sentence for a run measured under --load
    (empty for an idle run, or one from before --load existed): its numbers
    are not comparable to an idle run's, and the heading must say so."""
    load = result.get("load") or {}
    if not load.get("cpus"):
        return ""
    return f" Loaded: {describe(load['per_cpus'], load['cpus'])}, for the whole run, warm-ups included."


def render(result: dict, scaling: Optional[dict] = None, images: Optional[dict] = None) -> str:
    agg = aggregate(result)
    workers = result["workers"][0]
    mi = result["machine"]
    when = datetime.datetime.fromtimestamp(result["started"]).strftime("%Y-%m-%d %H:%M")
    versions = {}
    for (sc, w, lib), a in agg.items():
        if a.get("version"):
            versions[lib] = a["version"]
    libs = libs_in(result)
    vers = ", ".join(f"{lib} {versions[lib]}".strip() for lib in libs if lib in versions and lib != "serial")
    missing = [f"{lib} ({why})" for lib, why in result.get("lib_status", {}).items()]
    loads = result.get("load_1min", [])
    parts = []
    if result["kind"] == "quick":
        parts.append(f"Quick run: results checked only, no timing claims.{load_note(result)}\n")
        parts.append(correctness_table(result, agg, workers))
        return "\n".join(parts) + "\n"
    parts.append("## Process pools side by side (`python -m bench`)\n")
    parts.append(
        f"Run {when}: {mi.get('cpu_model', '?')}, {mi.get('usable_cpus')} usable CPUs, "
        f"{mi.get('mem_total_gib', '?')} GiB, Python {mi['python']}; {workers} workers for every library, "
        f"{result['repeats']} repeats interleaved across libraries (median [min–max]), a {result['limit_s']:.0f} s "
        f"limit per library and scenario; the whole run took {result['duration_s'] / 60:.1f} min. "
        f"1-minute load average during the run: {min(loads):.2f}–{max(loads):.2f} "
        f"(other work shared the machine at times: treat differences under ~20 % as noise)."
        f"{load_note(result)}\n")
    rev = result.get("shoal_revision")
    if rev:
        same = rev[0] == rev[-1]
        parts.append(f"Versions: {vers}; shoal from the tree at {rev[0]}"
                     + ("" if same else f" at the start and {rev[-1]} at the end (it changed during the run)")
                     + ".\n")
    else:
        parts.append(f"Versions: {vers}.\n")
    if missing:
        parts.append("Not run: " + "; ".join(missing) + ".\n")
    parts.append(
        "Every scenario checks each library's result against the serial run (digest of the whole "
        "result); **WRONG** would mean a different result, **timeout**/**error** that it did not finish. "
        "`×N` after a number: that library's time is N times shoal's (above 1: shoal is faster). "
        "mp.Pool = `multiprocessing.Pool` (fork), PPE = `concurrent.futures.ProcessPoolExecutor` (fork).\n")
    if images and images.get("scenarios"):
        parts.append(f"![time per scenario and library]({images['scenarios']})\n")
    parts.append("### Summary\n")
    parts.append(summary_table(result, agg, workers) + "\n")
    parts.append("### The pool issue's targets\n")
    ttable, misses = targets_table(result, agg, workers)
    parts.append(ttable + "\n")
    parts.append("### Where shoal is not fastest\n")
    lost = losses(result, agg, workers)
    if not lost and not misses:
        parts.append("shoal was fastest in every scenario and met every target in this run.\n")
    for sc, ms, lib, v, s in lost:
        cause = (CAUSES.get((sc.name, ms.key)) or CAUSES.get(sc.name)
                 or (CAUSES.get(f"target-{sc.issue}") if sc.issue else None) or "not yet analysed.")
        parts.append(f"- **{sc.title} — {ms.label}**: {lib} {fmt(v, ms.unit)} vs shoal {fmt(s, ms.unit)}. {cause}")
    for tag, what, factor, target in misses:
        cause = CAUSES.get(f"target-{tag}", "not yet analysed.")
        parts.append(f"- **target ({tag}) missed** ({what}): {factor:.2f}x against {target}x. {cause}")
    parts.append("")
    if scaling:
        parts.append("### Scaling\n")
        sagg = aggregate(scaling)
        ws = scaling["workers"]
        parts.append(
            f"`python -m bench --workers {','.join(map(str, ws))} --scenarios {','.join(scaling['scenarios'])} "
            f"--repeats {scaling['repeats']}` on the same {mi.get('usable_cpus')}-CPU machine "
            "(beyond the CPU count, workers only add contention).\n")
        if images and images.get("scaling"):
            parts.append(f"![scaling]({images['scaling']})\n")
        for sn in scaling["scenarios"]:
            sc = BY_NAME[sn]
            ms = sc.measures[0]
            head = "| library | " + " | ".join(f"workers={w}" for w in ws) + " |"
            parts.append(f"{sc.title}, {ms.label}:\n")
            parts.append(head)
            parts.append("|---|" + "---:|" * len(ws))
            for lib in libs_in(scaling):
                from .harness import runs

                if not runs(lib, sc):
                    continue
                cells = []
                for w in ws:
                    st = cell_status(scaling, sagg, sn, w, lib)
                    v = _value(sagg, sn, w, lib, ms.key)
                    cells.append(st if st is not None else (fmt(v[0], ms.unit) if v else "n/a"))
                parts.append(f"| {lib} | " + " | ".join(cells) + " |")
            parts.append("")
    parts.append("### Details per scenario\n")
    parts.append(detail_tables(result, agg, workers))
    parts.append(
        "Reproduce: `make bench` (installs bench/requirements.txt into .venv, runs `python -m bench`); "
        "raw results land in bench/results/*.json. `python -m bench --quick` checks every result at "
        "small sizes in well under two minutes.\n")
    return "\n".join(parts)


# -- plots -----------------------------------------------------------------------------------------


COLORS = {
    "shoal": "#d62728", "shoal+SharedArray": "#ff9896", "shoal+fork": "#ffbb78", "serial": "#7f7f7f",
    "multiprocessing.Pool": "#1f77b4", "ProcessPoolExecutor": "#aec7e8", "joblib": "#2ca02c",
    "loky": "#98df8a", "mpire": "#9467bd", "dask": "#8c564b", "ray": "#e377c2",
}


def plot_scenarios(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(result)
    workers = result["workers"][0]
    panels = []
    for sc in SCENARIOS:
        if sc.name not in result["scenarios"]:
            continue
        for ms in sc.measures:
            if ms.key in ("idle_pss_per_worker_mb", "tasks_per_s", "items_per_s"):
                continue
            panels.append((sc, ms))
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (sc, ms) in zip(axes.flat, panels):
        names, meds, lo, hi, colors = [], [], [], [], []
        for lib in libs_in(result):
            if lib == "serial" and not sc.serial_timed:
                continue
            v = _value(agg, sc.name, workers, lib, ms.key)
            if v is None:
                st = cell_status(result, agg, sc.name, workers, lib)
                from .harness import runs

                if runs(lib, sc) and st not in (None, "—", "n/a"):
                    names.append(SHORT.get(lib, lib) + f"\n({st.strip('*').lower()})")
                    meds.append(0)
                    lo.append(0)
                    hi.append(0)
                    colors.append("#ffffff")
                continue
            names.append(SHORT.get(lib, lib))
            meds.append(v[0])
            lo.append(v[0] - v[1])
            hi.append(v[2] - v[0])
            colors.append(COLORS.get(lib, "#17becf"))
        ax.bar(range(len(names)), meds, yerr=[lo, hi], color=colors, edgecolor="black", linewidth=0.4, capsize=2)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        label = sc.title.split(" ", 1)[0] + " " + ms.label
        ax.set_title(label if len(label) < 48 else label[:46] + "…", fontsize=8)
        unit = {"us": "µs"}.get(ms.unit, ms.unit)
        ax.set_ylabel(unit + ("" if ms.lower_is_better else " (higher is better)"), fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        if meds and max(meds) > 0 and min(m for m in meds if m > 0) * 30 < max(meds):
            ax.set_yscale("log")
    fig.suptitle(f"shoal and its peers, {workers} workers (median, min–max bars; lower is better unless noted)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_scaling(scaling: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(scaling)
    ws = scaling["workers"]
    names = scaling["scenarios"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.8), squeeze=False)
    for ax, sn in zip(axes.flat, names):
        sc = BY_NAME[sn]
        ms = sc.measures[0]
        for lib in libs_in(scaling):
            xs, ys = [], []
            for w in ws:
                v = _value(agg, sn, w, lib, ms.key)
                if v is not None:
                    xs.append(w)
                    ys.append(v[0])
            if xs:
                ax.plot(xs, ys, marker="o", label=SHORT.get(lib, lib), color=COLORS.get(lib),
                        linewidth=2.2 if lib == "shoal" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ws)
        ax.set_xticklabels([str(w) for w in ws])
        ax.set_xlabel("workers")
        ax.set_ylabel(ms.unit)
        ax.set_title(f"{sc.title.split(' ', 1)[0]} {ms.label}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_images(result: dict, scaling: Optional[dict]) -> dict:
    os.makedirs(IMG, exist_ok=True)
    images = {}
    try:
        plot_scenarios(result, os.path.join(IMG, "bench_pools.png"))
        images["scenarios"] = "img/bench_pools.png"
        if scaling and len(scaling["workers"]) > 1:
            plot_scaling(scaling, os.path.join(IMG, "bench_pools_scaling.png"))
            images["scaling"] = "img/bench_pools_scaling.png"
    except ImportError as exc:
        print(f"plots skipped: {exc} (pip install matplotlib)")
    return images


def write_doc(section: str) -> None:
    """Replaces the text between the pools markers, keeping the rest of the file."""
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    try:
        with open(DOC) as f:  # re-read right before writing: others edit this file too
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, DOC)


def console_summary(result: dict) -> str:
    agg = aggregate(result)
    workers = result["workers"][0]
    if result["kind"] == "quick":
        return correctness_table(result, agg, workers)
    out = [f"workers={w}:\n" + summary_table(result, agg, w) for w in result["workers"]]
    if 2 in result["workers"]:
        out.append(targets_table(result, agg, 2)[0])
    return "\n\n".join(out)


def correct_for(result: dict, libs: list) -> dict:
    """{(scenario, lib): status} for the given libraries (used by the quick test)."""
    agg = aggregate(result)
    out: dict[Any, str] = {}
    for (sn, w, lib), a in agg.items():
        if lib in libs:
            out[(sn, lib)] = a["status"]
    return out


__all__ = ["render", "write_doc", "write_images", "console_summary", "STDLIB"]
