"""``python -m shoal top``: a real pool in a child process, watched by a real
``shoal top`` process, as plain text (``--once``) and live under a real tmux.

The pool runs in a small script written to a temporary folder (POOL_SCRIPT): an
Executor of two workers doing short sleeps until its stdin closes, which
prints its pid and its workers' pids first. Every view here is narrowed to that
process with ``--pid``: other processes of this user may run pools meanwhile.

Run as a script to regenerate the screenshot in the docs (a real view of a
real pool, exported by rich's ``Console(record=True).export_svg``):

    PYTHONPATH=build/dev/pkg .venv/bin/python tests/test_top.py --screenshot docs/img/shoal-top.svg
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

import shoal

# The package this test imports, for every child process (the dev build's pkg folder, say).
PKG_PATH = os.path.dirname(os.path.dirname(shoal.__file__))
TIMEOUT_S = 30.0

POOL_SCRIPT = textwrap.dedent('''
    """A pool to watch: works until its stdin closes (or a minute passes)."""
    import json
    import os
    import sys
    import threading
    import time

    import shoal


    def burn(n):
        """CPU work, now and then an exception, rarely a worker that exits."""
        if n % 97 == 96:
            os._exit(3)
        if n % 23 == 22:
            raise ValueError(f"item {n} is odd")
        end = time.process_time() + 0.01 * (1 + n % 4)
        while time.process_time() < end:
            pass
        time.sleep(0.01)
        return n


    if __name__ == "__main__":
        workers, mode = int(sys.argv[1]), sys.argv[2]
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        with shoal.Executor(workers) as ex:
            first = ex.submit(time.sleep, 0)  # starts the workers
            first.result(timeout=30)
            deadline = time.monotonic() + 30
            while len(ex.worker_pids()) < workers and time.monotonic() < deadline:
                time.sleep(0.01)
            print(json.dumps({"pid": os.getpid(), "workers": ex.worker_pids()}), flush=True)
            n, deadline = 0, time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                if mode == "sleep":
                    list(ex.map(time.sleep, [0.02] * 10))
                else:
                    for fut in [ex.submit(burn, n + i) for i in range(8)]:
                        try:
                            fut.result(timeout=30)
                        except Exception:
                            pass
                    n += 8
''')


class PoolProcess:
    """The pool script, running: `pid`, `worker_pids`, and `stop()` (closes its stdin)."""

    def __init__(self, proc: subprocess.Popen[str], pid: int, worker_pids: list[int]) -> None:
        self.proc, self.pid, self.worker_pids = proc, pid, worker_pids

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT_S)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=PKG_PATH)
    env.pop("TMUX", None)
    return env


@contextmanager
def running_pool(folder: Path, workers: int = 2, mode: str = "sleep") -> Iterator[PoolProcess]:
    script = folder / "top_pool.py"
    script.write_text(POOL_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(workers), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        line = _readline(proc, TIMEOUT_S)
        info = json.loads(line)
        assert len(info["workers"]) == workers, info
        yield PoolProcess(proc, info["pid"], info["workers"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT_S)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's next line of output, or a failure after `timeout` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"{proc.args!r} printed nothing in {timeout:.0f} s")
    line = proc.stdout.readline()
    assert line, f"{proc.args!r} ended (exit code {proc.wait(timeout=TIMEOUT_S)}) before printing a line"
    return line


def top(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", "top", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=TIMEOUT_S)


def worker_rows(text: str) -> dict[int, tuple[int, str]]:
    """{worker pid: (slot, state)} of the worker rows in a view."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(starting|idle|running|exiting|dead|empty)\b", text, flags=re.M)
    return {int(pid): (int(slot), state) for slot, pid, state in rows}


def tasks_done(text: str, pid: int) -> Optional[int]:
    """The pool of process `pid`'s count of tasks done, as the view shows it."""
    m = re.search(rf"pid {pid} .*?\n.*?tasks \S+/s \((\d+) done", text)
    return int(m.group(1)) if m else None


# --- --once ---------------------------------------------------------------------------------------------------


def test_once_shows_the_pool_and_a_row_per_worker(tmp_path: Path, no_leaks: None) -> None:
    with running_pool(tmp_path) as pool:
        # FORCE_COLOR would make rich colour a pipe: --once must still write plain text.
        run = top("--once", "--pid", str(pool.pid), env=dict(_env(), FORCE_COLOR="1", TERM="xterm-256color"))
        assert run.returncode == 0, run.stdout + run.stderr
        out = run.stdout
        assert run.stderr == ""
        assert "\x1b" not in out, "escape codes in --once output"
        assert re.search(rf"^Executor top_pool\.py\s+pid {pool.pid}\s+(running)", out, flags=re.M), out
        rows = worker_rows(out)
        assert set(rows) == set(pool.worker_pids), out
        assert sorted(slot for slot, _ in rows.values()) == [0, 1], out
        # Two samples an interval apart: a rate, not "-".
        assert re.search(r"tasks \d+\.\d/s \(\d+ done", out), out
        for column in ("slot", "pid", "state", "job", "running", "done", "raised", "busy", "CPU", "RSS",
                       "restarts"):
            assert re.search(rf"\b{column}\b", out), column


def test_once_for_a_process_without_a_pool_is_one_line_and_exit_1(no_leaks: None) -> None:
    from shoal.obs.reader import list_pools

    assert list_pools(os.getpid()) == [], "this test process should have no pool open"
    run = top("--once", "--pid", str(os.getpid()))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.strip() == f"shoal top: process {os.getpid()} has no shoal pool"

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        run = top("--once", "--pid", str(sleeper.pid))
        assert (run.returncode, run.stderr.count("\n")) == (1, 1), run.stderr
        assert f"process {sleeper.pid} has no shoal pool" in run.stderr
    finally:
        sleeper.kill()
        sleeper.wait(timeout=TIMEOUT_S)
    # Now a pid no process has (the sleeper's, reaped; reused only after the pid space wraps).
    run = top("--once", "--pid", str(sleeper.pid))
    assert (run.returncode, run.stderr.count("\n")) == (1, 1) and "Traceback" not in run.stderr, run.stderr
    assert f"no process {sleeper.pid}" in run.stderr


def test_bad_options_are_one_line_errors() -> None:
    for args in (["--pid", "-3"], ["--pid", "many"], ["--interval", "0"], ["--interval", "soon"]):
        run = top("--once", *args)
        assert run.returncode == 2, args
        assert "Traceback" not in run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith("python -m shoal top: error: argument"), run.stderr


def test_live_view_into_a_pipe_prints_plain_views_and_ctrl_c_exits_0(tmp_path: Path, no_leaks: None) -> None:
    with running_pool(tmp_path) as pool:
        proc = subprocess.Popen([sys.executable, "-m", "shoal", "top", "--pid", str(pool.pid), "--interval", "0.1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
        try:
            # Two views one after the other: it is in its refresh loop.
            assert proc.stdout is not None
            seen = [_readline(proc, TIMEOUT_S) for _ in range(2)]
            deadline = time.monotonic() + TIMEOUT_S
            while sum(line.startswith("shoal top ") for line in seen) < 2 and time.monotonic() < deadline:
                seen.append(_readline(proc, deadline - time.monotonic()))
            text = "".join(seen)
            assert text.count("shoal top ") >= 2 and "\x1b" not in text, text
            assert set(worker_rows(text)) == set(pool.worker_pids), text
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0 and "Traceback" not in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT_S)


# --- live, under tmux -----------------------------------------------------------------------------------------


class Tmux:
    """One tmux server of our own (its own socket), running one command in a 160x50 pane that stays
    after the command ends (remain-on-exit), so what it left on the screen can be read."""

    def __init__(self, folder: Path, command: str) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.skip("tmux is not installed")
        self.tmux = tmux
        self.socket = f"shoal-top-{os.getpid()}-{time.monotonic_ns()}"
        self.conf = folder / "tmux.conf"
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 1000\n", encoding="utf-8")
        self.command = command
        self.socket_path = ""

    def start(self) -> None:
        self._call("-f", str(self.conf), "new-session", "-d", "-s", "top", "-x", "160", "-y", "50", self.command)
        self.socket_path = self._call("display-message", "-p", "#{socket_path}").strip()

    def _call(self, *args: str) -> str:
        run = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True,
                             env=_env(), timeout=TIMEOUT_S)
        assert run.returncode == 0, f"tmux {args[0]}: {run.stderr}"
        return run.stdout

    def capture(self) -> str:
        return self._call("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self._call("send-keys", "-t", "top", *keys)

    def exit_status(self) -> Optional[int]:
        """The exit status of shoal top once it has ended (top_command() prints it then), else None."""
        # (tmux's own #{pane_dead_status} is not always set when the pane's terminal closes first.)
        found = re.search(rf"^{EXIT_MARK}(\d+)$", self.capture(), flags=re.M)
        return int(found.group(1)) if found else None

    def wait_for(self, what: str, test: Callable[[str], bool]) -> str:
        """The first capture that passes `test`, polled until a deadline."""
        deadline = time.monotonic() + TIMEOUT_S
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if test(screen):
                return screen
            if self.exit_status() is not None:
                raise AssertionError(f"shoal top ended while waiting for {what}:\n{self.capture()}")
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {TIMEOUT_S} s; the screen:\n{screen}")

    def wait_until_dead(self) -> int:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.exit_status()
            if status is not None:
                return status
            time.sleep(0.05)
        raise AssertionError(f"shoal top still runs after {TIMEOUT_S} s:\n{self.capture()}")

    def close(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, env=_env(),
                       timeout=TIMEOUT_S)
        if self.socket_path:  # kill-server leaves the socket file behind
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass


EXIT_MARK = "shoal top exited with status "


def top_command(*args: str, stdin: str = "") -> str:
    """A shell command line running `python -m shoal top` with the test's package, then
    printing its exit status (after top has left the alternate screen, so it stays visible;
    the tmux server is killed at the end of each test)."""
    words = ["env", f"PYTHONPATH={PKG_PATH}", sys.executable, "-m", "shoal", "top", *args]
    line = " ".join(shlex.quote(w) for w in words) + (f" < {shlex.quote(stdin)}" if stdin else "")
    # The shell stays a while: tmux may drop a pane's last output when its process exits at once.
    return f"{line}; echo {shlex.quote(EXIT_MARK)}$?; sleep {TIMEOUT_S:.0f}"


@contextmanager
def tmux_running(folder: Path, command: str) -> Iterator[Tmux]:
    mux = Tmux(folder, command)
    try:
        mux.start()
        yield mux
    finally:
        mux.close()


def test_live_view_shows_workers_counts_up_and_q_quits(tmp_path: Path, no_leaks: None) -> None:
    with running_pool(tmp_path) as pool, \
            tmux_running(tmp_path, top_command("--pid", str(pool.pid), "--interval", "0.2")) as mux:
        screen = mux.wait_for("the pool and its workers",
                              lambda s: set(worker_rows(s)) == set(pool.worker_pids) and tasks_done(s, pool.pid)
                              is not None)
        assert "q or Ctrl-C to quit" in screen
        first = tasks_done(screen, pool.pid)
        assert first is not None
        mux.wait_for("a higher count of tasks done", lambda s: (tasks_done(s, pool.pid) or 0) > first)
        mux.keys("q")
        assert mux.wait_until_dead() == 0
        assert "Traceback" not in mux.capture()


def test_a_pool_that_ends_while_watched_and_ctrl_c_without_a_tty_on_stdin(tmp_path: Path, no_leaks: None) -> None:
    # stdin is /dev/null: no keys to read; the view runs until Ctrl-C.
    with running_pool(tmp_path) as pool, \
            tmux_running(tmp_path, top_command("--pid", str(pool.pid), "--interval", "0.2",
                                               stdin="/dev/null")) as mux:
        screen = mux.wait_for("the pool", lambda s: set(worker_rows(s)) == set(pool.worker_pids))
        assert "Ctrl-C to quit" in screen and "q or Ctrl-C" not in screen, "no keys without a terminal on stdin"
        pool.stop()
        screen = mux.wait_for("the pool gone from the view",
                              lambda s: not worker_rows(s) and "waiting for pools to appear" in s)
        assert f"no process {pool.pid} is running" in screen or f"process {pool.pid} has no shoal pool" in screen
        assert f"Executor top_pool.py (pid {pool.pid}) ended" in screen, screen
        assert "Traceback" not in screen
        assert mux.exit_status() is None, "shoal top ended with its pool"
        mux.keys("C-c")
        assert mux.wait_until_dead() == 0
        assert "Traceback" not in mux.capture()


def test_live_view_of_a_process_without_a_pool_says_so_and_waits(tmp_path: Path, no_leaks: None) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with tmux_running(tmp_path, top_command("--pid", str(sleeper.pid))) as mux:
            screen = mux.wait_for("the note", lambda s: "waiting for pools to appear" in s)
            assert f"process {sleeper.pid} has no shoal pool; waiting for pools to appear" in screen
            mux.keys("q")
            assert mux.wait_until_dead() == 0
    finally:
        sleeper.kill()
        sleeper.wait(timeout=TIMEOUT_S)


# --- the screenshot in the docs -------------------------------------------------------------------------------


def make_screenshot(out: Path) -> None:
    """A real view of a real pool (four workers burning CPU, some tasks raising, now and then a
    worker exiting), two samples a second apart, as SVG."""
    import io
    import tempfile

    from rich.console import Console

    from shoal.cli.top import Sampler, render

    with tempfile.TemporaryDirectory() as folder, running_pool(Path(folder), workers=4, mode="mixed") as pool:
        sampler = Sampler(pool.pid)
        deadline = time.monotonic() + TIMEOUT_S
        sample = sampler.sample()
        while time.monotonic() < deadline:  # until a worker has been replaced, for the restarts column
            time.sleep(1.0)
            sample = sampler.sample()
            if sample.pools and sample.pools[0].snap.restarts and sample.pools[0].tasks_per_s and \
                    all(rates.cpu_percent is not None for _, rates in sample.pools[0].workers):
                break
        console = Console(record=True, width=124, file=io.StringIO(), force_terminal=True,
                          color_system="truecolor")
        console.print(render(sample, waiting=True, hint="q or Ctrl-C to quit"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(console.export_svg(title="python -m shoal top", clear=False), encoding="utf-8")
        print(console.export_text(), end="")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        make_screenshot(Path(sys.argv[2]))
    else:
        sys.exit("usage: python tests/test_top.py --screenshot docs/img/shoal-top.svg")
