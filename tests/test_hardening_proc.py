"""Worker supervision does not depend on the caller's SIGCHLD disposition.

A program may set SIGCHLD to SIG_IGN (to have the kernel reap its children).
Then no exit status can be collected with waitpid(): a spawned worker's pidfd
turns readable but waitpid() fails with ECHILD, and a fork server that
inherited SIG_IGN never sees SIGCHLD at all. Worker deaths must still be
detected and shutdown must still return.

Each scenario runs in a subprocess of its own, so that changing the signal
disposition never touches the pytest process (its other tests wait for
children of their own). Every wait has a timeout: the bug this guards against
is a hang.
"""
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r'''
    import logging
    import os
    import signal
    import sys
    import threading

    import shoal

    def suicide():
        os.kill(os.getpid(), signal.SIGKILL)

    def square(x):
        return x * x

    def shut_down(ex):
        """Shuts ex down in a thread; False if that did not return in time."""
        t = threading.Thread(target=ex.shutdown, daemon=True)
        t.start()
        t.join(timeout=30)
        return not t.is_alive()

    class Warnings(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    def main(scenario, method, other_thread):
        warnings = Warnings()
        logging.getLogger("shoal").addHandler(warnings)
        # With another Python thread running, the fork server is a clean
        # interpreter instead of a fork of this process: both must cope.
        hold = threading.Event()
        if other_thread:
            threading.Thread(target=hold.wait, args=(60,), daemon=True).start()
        previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            if scenario == "crash":
                ex = shoal.Executor(2, start_method=method)
                for _ in range(2):  # the replacement's death is seen too
                    fut = ex.submit(suicide)
                    try:
                        fut.result(timeout=30)
                    except shoal.WorkerLostError as e:
                        print("lost:", e)
                    except TimeoutError:
                        print("FAIL: a dead worker's task stayed pending")
                        os._exit(1)
                    else:
                        print("FAIL: the task returned")
                        os._exit(1)
                futs = [ex.submit(square, i) for i in range(20)]
                assert [f.result(timeout=30) for f in futs] == [i * i for i in range(20)]
            else:  # "plain": one worker, replaced every 5 tasks
                ex = shoal.Executor(1, start_method=method, max_tasks_per_child=5)
                futs = [ex.submit(square, i) for i in range(20)]
                assert [f.result(timeout=30) for f in futs] == [i * i for i in range(20)]
            if not shut_down(ex):
                print("FAIL: shutdown() did not return")
                os._exit(1)
        finally:
            signal.signal(signal.SIGCHLD, previous)
            hold.set()
        if scenario == "plain" and warnings.records:
            print("FAIL: warnings for workers that exited as asked:", warnings.records)
            os._exit(1)
        print("OK")

    if __name__ == "__main__":
        try:
            main(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)  # not through atexit: a hung pool would hang the exit too
    '''
)

METHODS = [
    pytest.param("forkserver", False, id="forkserver"),
    pytest.param("forkserver", True, id="forkserver-clean-interpreter"),
    pytest.param("spawn", False, id="spawn"),
]


def _run(tmp_path, scenario, method, other_thread):
    script = tmp_path / "sigchld_ignored.py"
    script.write_text(SCRIPT)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), scenario, method, "1" if other_thread else "0"],
            capture_output=True,
            text=True,
            timeout=90,  # under the suite's per-test limit
        )
    except subprocess.TimeoutExpired as e:  # the child is killed by run()
        pytest.fail(f"the program hung; output so far:\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("method,other_thread", METHODS)
def test_worker_death_is_detected_with_sigchld_ignored(tmp_path, method, other_thread):
    out = _run(tmp_path, "crash", method, other_thread)
    assert out.count("lost:") == 2


@pytest.mark.parametrize("method,other_thread", METHODS)
def test_pool_works_normally_with_sigchld_ignored(tmp_path, method, other_thread):
    _run(tmp_path, "plain", method, other_thread)
