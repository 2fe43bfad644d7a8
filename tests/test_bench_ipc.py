"""The IPC benchmarks run to completion and their results check out.

Smoke runs only (``--quick``): no timing thresholds, just that every benchmark
finishes, reports sane numbers, checks its payloads, and leaves no shared memory
behind.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shoal
from shm_segments import shoal_segments_of

ROOT = Path(__file__).resolve().parents[1]
IPC_BENCH = ROOT / "build" / "dev" / "cpp" / "bench" / "ipc_bench"
TIMEOUT = 120


def _run(cmd: list, env: dict = None) -> tuple:
    """Runs ``cmd`` from the repository root; returns (returncode, stdout, stderr, pid)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{cmd} did not finish within {TIMEOUT}s\nstdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, proc.pid


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_python_ipc_bench_quick(tmp_path):
    # The package directory shoal was imported from (build/dev/pkg when testing a
    # build tree), without resolving its symlinked modules, plus the repo root for `bench`.
    pkg_root = str(Path(os.path.abspath(shoal.__file__)).parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), pkg_root, env.get("PYTHONPATH")) if p)
    out_json = tmp_path / "ipc.json"
    rc, out, err, pid = _run([sys.executable, "-m", "bench.ipc", "--quick", "--json", str(out_json)], env)
    assert rc == 0, f"bench.ipc failed ({rc})\nstdout:\n{out}\nstderr:\n{err}"
    assert "All results checked: OK" in out
    assert "| shoal.Queue |" in out and "| multiprocessing.Queue |" in out

    res = json.loads(out_json.read_text())
    assert res["ok"] is True and res["quick"] is True
    n = res["sizes"]["round_trips"]
    for transport, r in res["round_trip_us"].items():
        assert r["samples"] == n * res["repeats"], transport
        assert _positive(r["p50"]) and r["p99"] >= r["p50"], transport
    for lib in ("shoal.Queue", "multiprocessing.Queue"):
        assert _positive(res["small_objects_per_s"][lib]["median"])
        if res["arrays_gb_per_s"] is not None:
            assert _positive(res["arrays_gb_per_s"][lib]["median"])
    for form, per_lib in res["lock_ns_per_pair"].items():
        for lib in ("shoal.Lock", "multiprocessing.Lock"):
            assert _positive(per_lib[lib]["best"]), (form, lib)
    assert all(_positive(v) for v in res["ratios"].values() if v is not None)
    assert shoal_segments_of(pid) == set(), "the benchmark left shared-memory segments behind"


@pytest.mark.skipif(not IPC_BENCH.exists(), reason=f"{IPC_BENCH} is not built")
def test_cpp_ipc_bench_quick(tmp_path):
    out_json = tmp_path / "ipc_cpp.json"
    rc, out, err, pid = _run([str(IPC_BENCH), "--quick", "--json", str(out_json)])
    assert rc == 0, f"ipc_bench failed ({rc})\nstdout:\n{out}\nstderr:\n{err}"
    assert "checked: OK" in out

    res = json.loads(out_json.read_text())
    assert res["ok"] is True and res["quick"] is True
    transports = [r["transport"] for r in res["latency"]]
    assert any("SpscRing" in t for t in transports) and any("pipe" in t for t in transports)
    assert any("socketpair" in t for t in transports)
    for r in res["latency"]:
        assert r["samples"] > 0 and _positive(r["median_us"]) and r["p99_us"] >= r["median_us"], r
    frames = {r["frame_bytes"] for r in res["throughput"]}
    assert {64, 4096, 1 << 20} <= frames
    for r in res["throughput"]:
        assert _positive(r["gbps_median"]) and _positive(r["frames_per_s"]), r
    assert shoal_segments_of(pid) == set(), "the benchmark left shared-memory segments behind"
