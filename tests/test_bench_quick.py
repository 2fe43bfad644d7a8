"""`python -m bench --quick` runs every scenario and every result is correct.

Results only: no timing thresholds (timings on a shared CI machine say nothing).
Peers that are not installed must be reported as missing, not fail the run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # the bench package lives at the repository root
MUST_PASS = ("shoal", "multiprocessing.Pool", "ProcessPoolExecutor")


@pytest.mark.timeout(330)
def test_bench_quick(tmp_path):
    before = set(_shoal_names())
    out = tmp_path / "quick.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), ROOT) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())

    from bench.harness import runs
    from bench.scenarios import BY_NAME

    assert result["kind"] == "quick"
    records = result["records"]
    for lib in ("serial",) + MUST_PASS:
        assert lib not in result["lib_status"], f"{lib}: {result['lib_status'].get(lib)}"
        for name in result["scenarios"]:
            sc = BY_NAME[name]
            if not runs(lib, sc):
                continue
            mine = [r for r in records if r["lib"] == lib and r["scenario"] == name]
            assert mine, f"{lib} / {name}: no result reported"
            for r in mine:
                assert r["status"] == "ok", f"{lib} / {name}: {r['status']}: {r.get('error')}"
                assert r["correct"] is True, f"{lib} / {name}: result differs from serial"

    # Every other library is accounted for: a result per scenario, or a reason.
    for lib in result["libs"]:
        if lib in result["lib_status"]:
            assert result["lib_status"][lib].startswith(("missing", "n/a"))
            continue
        for name in result["scenarios"]:
            if runs(lib, BY_NAME[name]):
                assert any(r["lib"] == lib and r["scenario"] == name for r in records), f"{lib} / {name} dropped"
    # No library may return a wrong result, installed peers included.
    wrong = [(r["lib"], r["scenario"]) for r in records if r["status"] == "wrong"]
    assert not wrong, f"wrong results: {wrong}"
    # Each library's child ends with os._exit(): shoal's exit hooks must still
    # have removed its names (the owner token among them), not left them for
    # the next `import shoal` to reclaim.
    left = [name for name in set(_shoal_names()) - before if not _alive(_owner_pid(name))]
    assert not left, f"shared-memory names left by the bench's children: {left}"


def _shoal_names():
    return [n for n in os.listdir("/dev/shm") if n.startswith("shoal-")]


def _owner_pid(name):
    # shoal-<pid>-... (segments, arenas) and shoal-lock-<pid>-<hex> (owner tokens)
    return int(re.match(r"shoal-(?:lock-)?(\d+)-", name).group(1))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
