"""The large-data benchmark must keep working (it checks its own results; no timing is asserted)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_data_benchmark_quick_run_checks_every_result():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "bench.data", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed" not in proc.stdout.split("joblib")[0]  # shoal and the stdlib pools all checked out
