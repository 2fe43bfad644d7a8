"""The live web dashboard (shoal.obs.serve_dashboard, python -m shoal dashboard):
a real pool, real HTTP, a real headless Chromium.

Every dashboard here shows only this process's pools (pid=os.getpid()):
other processes of this user may run pools of their own meanwhile.

Run as a script to regenerate the screenshot in the docs:

    PYTHONPATH=build/dev/pkg .venv/bin/python tests/test_dashboard.py --screenshot docs/img/dashboard.png
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import shoal
from shoal.obs.dashboard import serve_dashboard

import tasks

CHROMEDRIVER = "/usr/bin/chromedriver"
WORKERS = 3


def _chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _browser_missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not os.path.exists(CHROMEDRIVER):
        return f"{CHROMEDRIVER} is missing"
    if _chromium() is None:
        return "chromium is missing"
    return ""


def _new_driver(user_data_dir: str) -> Any:
    """Headless Chromium with a profile of its own (`user_data_dir`, fresh):
    nothing of another run, or of a desktop browser, leaks in."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={user_data_dir}"):
        options.add_argument(arg)
    binary = _chromium()
    if binary:
        options.binary_location = binary
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One browser for the module (starting Chromium costs a second or two)."""
    missing = _browser_missing()
    if missing:
        pytest.skip(f"no headless browser: {missing}")
    driver = _new_driver(str(tmp_path_factory.mktemp("chromium-profile")))
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def ex() -> Iterator[shoal.Executor]:
    with shoal.Executor(max_workers=WORKERS) as executor:
        for f in [executor.submit(abs, -i) for i in range(WORKERS * 4)]:
            f.result(timeout=60)  # workers up
        yield executor


@contextmanager
def slow_map(executor: shoal.Executor, seconds: float = 0.02, most: int = 5000) -> Iterator[threading.Event]:
    """Runs a map of tasks sleeping `seconds` each in a background thread
    while the block runs (its input ends with the block, or after `most`
    items); the event is set once the map is done."""
    stop = threading.Event()
    done = threading.Event()
    failure: list[BaseException] = []

    def items() -> Iterator[int]:
        for i in range(most):
            if stop.is_set():
                return
            yield i

    def run() -> None:
        try:
            for _ in executor.map(tasks.sleep_then, items(), itertools.repeat(seconds), chunksize=1):
                pass
        except BaseException as exc:  # reported by the block's end
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the map did not finish"
        assert not failure, failure


def _get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _base(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")


def _token(url: str) -> str:
    return url.split("token=", 1)[1]


def _read_events(url: str, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if len(events) == count:
                    break
    return events


def _own_pools(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in summary["pools"] if p["pid"] == os.getpid()]


def test_requests_without_the_token_get_403(ex: shoal.Executor) -> None:
    with serve_dashboard(pid=os.getpid()) as dash:
        base = _base(dash.url)
        for path in ("/", "/events", "/snapshot.json", "/?token=wrong", "/events?token=" + _token(dash.url)[:-1]):
            status, body = _get(base + path)
            assert status == 403, path
            assert b"token" in body
        status, page = _get(dash.url)
        assert status == 200
        assert b"<title>shoal dashboard</title>" in page


def test_snapshot_json_describes_the_running_pool(ex: shoal.Executor) -> None:
    with serve_dashboard(pid=os.getpid()) as dash:
        status, body = _get(f"{_base(dash.url)}/snapshot.json?token={_token(dash.url)}")
        assert status == 200
        summary = json.loads(body)
        (pool,) = _own_pools(summary)
        assert pool["kind"] == "Executor"
        assert pool["state"] == "running"
        assert pool["workers"] == WORKERS
        assert sorted(w["slot"] for w in pool["worker_stats"]) == list(range(WORKERS))
        assert all(w["rss_bytes"] > 0 for w in pool["worker_stats"])  # read from /proc
        assert len(summary["bounds_s"]) == len(pool["worker_stats"][0]["duration_buckets"])
        assert summary["bounds_s"][-1] is None  # +inf, which JSON cannot carry


def test_event_stream_pushes_summaries_while_tasks_run(ex: shoal.Executor) -> None:
    with serve_dashboard(pid=os.getpid()) as dash, slow_map(ex):
        events = _read_events(f"{_base(dash.url)}/events?token={_token(dash.url)}", count=3)
        assert all(len(_own_pools(e)) == 1 for e in events)
        stamps = [_own_pools(e)[0]["taken_at"] for e in events]
        assert stamps == sorted(stamps) and stamps[0] < stamps[-1]  # fresh reads, not one repeated


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            serve_dashboard(port=port)
        assert info.value.errno == errno.EADDRINUSE
        assert f"port {port} on 127.0.0.1 is in use" in str(info.value)
        assert "\n" not in str(info.value)

        proc = subprocess.run([sys.executable, "-m", "shoal", "dashboard", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert proc.stderr == (f"shoal dashboard: port {port} on 127.0.0.1 is in use; "
                               "pass --port 0 for a free one\n")
        assert proc.stdout == ""


def test_close_ends_open_streams_and_frees_the_port() -> None:
    dash = serve_dashboard(pid=os.getpid())
    port = dash.port
    stream = urllib.request.urlopen(f"{_base(dash.url)}/events?token={_token(dash.url)}", timeout=10)
    try:
        assert stream.readline()  # the stream is open and sending
        dash.close()
        dash.close()  # idempotent
        rest = stream.read()  # the server ended the stream: read() returns instead of hanging
        assert isinstance(rest, bytes)
    finally:
        stream.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(dash.url, timeout=5)
    with serve_dashboard(port=port, pid=os.getpid()) as again:  # the port is free again
        assert again.port == port
        assert _get(again.url)[0] == 200


def test_a_pool_whose_process_is_killed_shows_as_gone() -> None:
    """SIGKILL leaves the pool's stats block behind, still saying "running":
    the dashboard says the pool is gone (or drops it once the block goes),
    and goes on serving."""
    from shm_segments import SHM, shoal_segments_of

    script = ("import shoal, sys, time\n"
              "ex = shoal.Executor(1)\n"
              "ex.submit(abs, -1).result(timeout=60)\n"
              "print('up', flush=True)\n"
              "time.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == "up\n"
        with serve_dashboard(pid=owner.pid) as dash:
            snapshot_url = f"{_base(dash.url)}/snapshot.json?token={_token(dash.url)}"

            def states() -> list[str]:
                status, body = _get(snapshot_url)
                assert status == 200
                return [p["state"] for p in json.loads(body)["pools"]]

            assert states() == ["running"]
            owner.kill()
            owner.wait(timeout=20)
            deadline = time.monotonic() + 20
            while states() not in ([], ["gone"]):
                assert time.monotonic() < deadline, "the dashboard still shows the killed pool running"
                time.sleep(0.1)
            events = _read_events(f"{_base(dash.url)}/events?token={_token(dash.url)}", count=2)
            assert all(p["state"] == "gone" for e in events for p in e["pools"])
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=20)
        if owner.stdout is not None:
            owner.stdout.close()
        for name in shoal_segments_of(owner.pid, locks=True):  # what the killed process left behind
            try:
                os.unlink(os.path.join(SHM, name))
            except FileNotFoundError:
                pass


def _pool_css(pid: int) -> str:
    return f'.pool[data-pid="{pid}"]:not(.ended)'


def _completed(browser: Any, pid: int) -> int:
    from selenium.webdriver.common.by import By

    text = browser.find_element(By.CSS_SELECTOR, f"{_pool_css(pid)} [data-testid=completed]").text
    return int(text.replace(",", ""))


def test_the_page_shows_lanes_and_the_completed_count_rises(ex: shoal.Executor, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    me = os.getpid()
    pool_css = _pool_css(me)
    with serve_dashboard(pid=me) as dash, slow_map(ex) as map_done:
        browser.get(dash.url)
        wait = WebDriverWait(browser, 20, poll_frequency=0.1)
        lanes = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{pool_css} .lane"))
        assert len(lanes) == WORKERS  # one lane per worker
        assert sorted(int(lane.get_attribute("data-slot")) for lane in lanes) == list(range(WORKERS))
        assert browser.find_element(By.ID, "conn").text == "live"
        wait.until(lambda d: _completed(d, me) > 0)
        first = _completed(browser, me)
        wait.until(lambda d: _completed(d, me) > first)
        assert not map_done.is_set()  # it rose while the map ran
        # A lane names the task it runs and for how long.
        wait.until(lambda d: any(re.fullmatch(r"job \d+ for \d+(\.\d)?(µs|ms|s)", c.text)
                                 for c in d.find_elements(By.CSS_SELECTOR, f"{pool_css} .lane td[data-c=running]")))
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{pool_css} [data-f=rate]").text not in ("", "–", "0.00"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{pool_css} .hist .bar:not(.empty)"))

        # A task that raises: its traceback shows, as text.
        failed = ex.submit(tasks.fail_on, 3)
        with pytest.raises(ValueError):
            failed.result(timeout=30)
        pre = wait.until(lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, f"{pool_css} .error pre")
                                    if "ValueError: bad item 3" in e.text])
        assert pre[0].text.startswith("Traceback")

        # A worker killed under its task: its lane shows the restart and how it ended.
        (tmp_path / "5.doomed").touch()
        with pytest.raises(shoal.WorkerLostError):
            ex.submit(tasks.kill_self_once, 5, str(tmp_path)).result(timeout=60)
        wait.until(lambda d: [c for c in d.find_elements(By.CSS_SELECTOR, f"{pool_css} .lane td[data-c=restarts]")
                              if c.text == "1 · killed by SIGKILL"])
        wait.until(lambda d: "signal 1" in d.find_element(By.CSS_SELECTOR, f"{pool_css} [data-f=r-causes]").text)

        # A second pool appears; when it exits, the page shows it closed, greyed out.
        with shoal.Executor(max_workers=1) as other:
            other.submit(abs, -1).result(timeout=60)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, pool_css)) == 2)
        closed = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'.pool[data-pid="{me}"].ended [data-f=state]'))
        assert closed[0].text == "closed"
        assert len(browser.find_elements(By.CSS_SELECTOR, pool_css)) == 1
        assert browser.find_element(By.ID, "conn").text == "live"  # and the page goes on


@contextmanager
def cli_dashboard(pid: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m shoal dashboard --port 0 --pid PID`` running, and the URL
    it printed; the block must stop it (the test's SIGINT); killed if not."""
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "dashboard", "--port", "0", "--pid", str(pid)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # the first thing it writes (or "" if it died)
        assert url.startswith("http://127.0.0.1:") and "/?token=" in url, url + (proc.stderr.read() if proc.stderr else "")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out, err


def test_cli_serves_the_pools_of_a_pid_and_ends_on_ctrl_c(ex: shoal.Executor, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    me = os.getpid()
    with cli_dashboard(me) as (proc, url), slow_map(ex):
        assert _get(_base(url) + "/")[0] == 403
        browser.get(url)
        wait = WebDriverWait(browser, 20, poll_frequency=0.1)
        lanes = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{_pool_css(me)} .lane"))
        assert len(lanes) == WORKERS
        wait.until(lambda d: _completed(d, me) > 0)
        first = _completed(browser, me)
        wait.until(lambda d: _completed(d, me) > first)
        out, err = _interrupt(proc)
        assert out == "" and err == ""  # the URL was its only output


def test_cli_with_a_pid_without_pools_says_so_and_waits(browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with cli_dashboard(idle.pid) as (proc, url):
            assert proc.stderr is not None
            assert proc.stderr.readline() == (f"shoal dashboard: no shoal pools running in process {idle.pid}; "
                                              "the page shows its pools once it has some\n")
            browser.get(url)
            note = WebDriverWait(browser, 20, poll_frequency=0.1).until(
                lambda d: d.find_element(By.ID, "note").text.startswith("no shoal pools") and d.find_element(By.ID, "note"))
            assert note.text == f"no shoal pools running in process {idle.pid}"
            assert note.is_displayed()
            assert not browser.find_elements(By.CSS_SELECTOR, ".pool")
            assert browser.find_element(By.ID, "conn").text == "live"  # still watching
            _interrupt(proc)
    finally:
        idle.kill()
        idle.wait(timeout=20)


# -- the screenshot in the docs ------------------------------------------------


def take_screenshot(path: str, workers: int = 4, seconds: float = 12.0) -> None:
    """Saves a screenshot (1280x900) of the dashboard of a busy pool: tasks of
    mixed length on `workers` workers, and a few tasks that raise."""
    import random
    import tempfile

    rng = random.Random(15)
    durations = [rng.choice([0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.15, 0.3, 0.6]) for _ in range(400)]
    with shoal.Executor(max_workers=workers) as executor, \
            serve_dashboard(pid=os.getpid()) as dash, tempfile.TemporaryDirectory() as profile:
        stop = threading.Event()

        def feed() -> None:
            while not stop.is_set():
                futures = [executor.submit(tasks.sleep_then, i, d) for i, d in enumerate(durations)]
                for f in futures:
                    if stop.is_set():
                        break
                    f.result()

        for bad in (3, 7):
            try:
                executor.submit(tasks.fail_on, bad, bad=bad).result(timeout=60)
            except ValueError:
                pass
        open(os.path.join(profile, "1.doomed"), "w").close()
        try:
            executor.submit(tasks.kill_self_once, 1, profile).result(timeout=60)  # a restart: "killed by SIGKILL"
        except shoal.WorkerLostError:
            pass
        import numpy

        executor.submit(tasks.length, numpy.ones(3 << 20)).result(timeout=60)  # 24 MiB through the arena
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        driver = _new_driver(profile)
        try:
            driver.set_window_size(1280, 900)
            driver.get(dash.url)
            time.sleep(seconds)  # a sparkline of some length
            driver.save_screenshot(path)
        finally:
            driver.quit()
            stop.set()
            feeder.join(timeout=60)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--screenshot":
        sys.exit("usage: python tests/test_dashboard.py --screenshot PATH.png")
    take_screenshot(sys.argv[2])
    print(f"wrote {sys.argv[2]}")
