"""Runs the scenarios for every library, each library in its own process with a
watchdog, and collects raw results.

Order: for each repeat, the serial reference first, then the libraries in an
order rotated by one each repeat (so drifting background load spreads over
all of them). Each (library, repeat) is one process running every scenario in
turn (start-up first, while the process is fresh); a scenario that exceeds its
time limit gets the process tree killed, is reported "timeout", and the
process is started again for the remaining scenarios. A library that failed
or timed out in a scenario is not run again in that scenario's later repeats.

With ``load_per_cpus`` (``--load N``) busy processes (bench/load.py) keep CPUs
loaded for the whole run, warm-ups included, so every library meets the same
load.
"""
from __future__ import annotations

import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from .child import MARK
from .load import busy_cpus
from .peers import ADAPTERS, check_available
from .scenarios import BY_NAME, SCENARIOS, _tree


#: scenarios whose serial timing is compared against (the others need serial only as the reference result)
SERIAL_REPEATED = {"cpu_10ms"}


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants from /proc."""

    def __init__(self, root: int, interval: float = 0.02, rescan_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.rescan_every = rescan_every
        self.pids: set = {root}
        self.seen: set = {root}
        self.peak_kb = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def reset_peak(self) -> int:
        with self._lock:
            peak, self.peak_kb = self.peak_kb, 0
        return peak

    def run(self) -> None:
        page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        i = 0
        while not self._stop.is_set():
            if i % self.rescan_every == 0:
                self.pids = {self.root, *_tree(self.root)}
                self.seen |= self.pids
            i += 1
            total = 0
            for pid in list(self.pids):
                try:
                    with open(f"/proc/{pid}/statm", "rb") as f:
                        total += int(f.read().split()[1]) * page_kb
                except (OSError, ValueError, IndexError):
                    pass
            with self._lock:
                self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


def _kill_tree(proc: subprocess.Popen, sampler: TreeSampler) -> None:
    """Kills the child's process group and every descendant the sampler saw
    (some libraries start helpers in their own sessions)."""
    pids = set(sampler.seen)
    try:
        pids |= set(_tree(proc.pid))
    except OSError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _child_env(lib: str) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        paths.append(root)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    env.setdefault("TQDM_DISABLE", "1")
    return env


def run_batch(lib: str, scenarios: list, workers: int, quick: bool, limit_s: float,
              log, on_result) -> None:
    """Runs ``scenarios`` for ``lib`` in child processes, restarting after a
    timeout or crash; calls on_result(scenario, record) once per scenario."""
    remaining = list(scenarios)
    while remaining:
        spec = {"lib": lib, "scenarios": remaining, "workers": workers, "quick": quick}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.child", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=_child_env(lib), start_new_session=True, text=True, bufsize=1,
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        err_tail: list = []

        def pump_out() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        def pump_err() -> None:
            for line in proc.stderr:
                err_tail.append(line)
                del err_tail[:-40]

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()

        current: Optional[str] = None
        hello: dict = {}
        deadline = time.monotonic() + limit_s  # import + hello
        began = time.monotonic()
        ended = False
        failed_how: Optional[str] = None
        while True:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                failed_how = "timeout"
                break
            if line is None:
                ended = True
                break
            if not line.startswith(MARK):
                continue
            ev = json.loads(line[len(MARK):])
            kind = ev["event"]
            if kind == "hello":
                hello = ev
            elif kind == "begin":
                current = ev["scenario"]
                sampler.reset_peak()
                began = time.monotonic()
                deadline = began + limit_s
            elif kind == "result":
                peak_kb = sampler.reset_peak()
                rec = {k: v for k, v in ev.items() if k not in ("event",)}
                rec["wall_s"] = time.monotonic() - began
                rec["version"] = hello.get("version", "")
                if rec.get("status") == "ok":
                    rec.setdefault("metrics", {})["peak_rss_mb"] = peak_kb / 1024
                on_result(ev["scenario"], rec)
                if ev["scenario"] in remaining:
                    remaining.remove(ev["scenario"])
                current = None
                deadline = time.monotonic() + limit_s  # session stop / next begin
            elif kind == "bye":
                # Do not wait for end-of-file: worker processes that outlive the
                # child (loky's, for one) may hold the pipe open.
                ended = True
                break
        sampler.stop()
        if failed_how == "timeout" or not ended:
            _kill_tree(proc, sampler)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_tree(proc, sampler)
            proc.wait()
        _kill_tree(proc, sampler)  # stragglers (helpers that outlive the child)
        if not remaining:
            return
        # The process ended (or was killed) before finishing: blame the scenario it was in.
        blamed = current or remaining[0]
        if failed_how == "timeout":
            if current is None:
                rec = {"status": "timeout", "error": f"no progress for {limit_s:.0f} s (starting or stopping)"}
            else:
                rec = {"status": "timeout", "error": f"exceeded the {limit_s:.0f} s limit"}
        else:
            rec = {"status": "error", "error": f"process exited (rc={proc.returncode}) during this scenario: "
                                               + "".join(err_tail[-5:])[-800:]}
        rec["wall_s"] = time.monotonic() - began
        log(f"    {lib} / {blamed}: {rec['status']}: {rec['error'][:200]}")
        on_result(blamed, rec)
        remaining.remove(blamed)


def runs(lib: str, sc) -> bool:
    """Whether ``lib`` takes part in scenario ``sc``."""
    if lib in ("shoal+SharedArray", "shoal+fork"):
        return sc.name == "shared_image"  # everything else is plain shoal
    return sc.libs is None or lib in sc.libs


def machine_info() -> dict:
    info: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return info


def shoal_revision() -> str:
    """The commit of the tree shoal is imported from, and whether its sources differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "python/shoal", "cpp"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "") if head else "unknown"


def run_suite(libs: list, scenario_names: list, workers_list: list, repeats: int, quick: bool,
              limit_s: float, log=print, load_per_cpus: int = 0) -> dict:
    started = time.time()
    t_start = time.monotonic()
    revision_at_start = shoal_revision()
    status: dict = {}
    run_libs = []
    for lib in libs:
        why = check_available(lib)
        if why is None:
            run_libs.append(lib)
        else:
            status[lib] = why
            log(f"  {lib}: {why}")
    records: list = []
    scen = [BY_NAME[n] for n in scenario_names]
    # start-up first: it must see a fresh process
    scen.sort(key=lambda s: not s.fresh_process)
    failed: set = set()  # (lib, scenario, workers) that failed or timed out: not repeated
    with busy_cpus(load_per_cpus) as busy:
        load = [os.getloadavg()[0]]
        for workers in workers_list:
            for rep in range(repeats):
                others = [lib for lib in run_libs if lib != "serial"]
                k = rep % len(others) if others else 0
                order = (["serial"] if "serial" in run_libs else []) + others[k:] + others[:k]
                log(f"[workers={workers} repeat {rep + 1}/{repeats}] load {os.getloadavg()[0]:.2f}  "
                    f"elapsed {time.monotonic() - t_start:.0f} s")
                for lib in order:
                    todo = [s.name for s in scen if runs(lib, s) and (lib, s.name, workers) not in failed]
                    if lib == "serial" and rep > 0:
                        # the reference needs one run; only the speed-up comparison needs its timing
                        todo = [n for n in todo if n in SERIAL_REPEATED]
                    if not todo:
                        continue
                    t0 = time.monotonic()

                    def on_result(name: str, rec: dict, lib=lib, workers=workers, rep=rep) -> None:
                        rec.update(lib=lib, scenario=name, workers=workers, repeat=rep)
                        records.append(rec)
                        if rec["status"] not in ("ok", "n/a"):
                            failed.add((lib, name, workers))

                    run_batch(lib, todo, workers, quick, limit_s, log, on_result)
                    log(f"  {lib:<22} {time.monotonic() - t0:6.1f} s")
                load.append(os.getloadavg()[0])
    result = {
        "kind": "quick" if quick else "full",
        "started": started,
        "duration_s": time.monotonic() - t_start,
        "machine": machine_info(),
        "shoal_revision": [revision_at_start, shoal_revision()],
        "load_1min": load,
        "load": {"per_cpus": load_per_cpus, "hogs": len(busy), "cpus": busy},
        "workers": workers_list,
        "repeats": repeats,
        "limit_s": limit_s,
        "libs": libs,
        "lib_status": status,
        "scenarios": scenario_names,
        "records": records,
    }
    check_results(result)
    return result


def check_results(result: dict) -> None:
    """Marks each record correct/wrong against the serial run's digest."""
    ref: dict = {}
    for r in result["records"]:
        if r["lib"] == "serial" and r["status"] == "ok":
            ref.setdefault((r["scenario"], r["workers"]), r["digest"])
    for r in result["records"]:
        if r["status"] != "ok":
            continue
        want = ref.get((r["scenario"], r["workers"]))
        sc = BY_NAME[r["scenario"]]
        if r["lib"] == "serial":
            r["correct"] = True
        elif want is None:
            # the serial reference could not run this scenario (start-up has none)
            r["correct"] = None if sc.name != "startup" else r["digest"] == _startup_digest()
        else:
            r["correct"] = r["digest"] == want
        if r["correct"] is False:
            r["status"] = "wrong"


def _startup_digest() -> str:
    from .scenarios import digest

    return digest(42)
