"""The live web dashboard: one page that shows every shoal pool of this user.

`serve_dashboard()` starts a small HTTP server (the standard library's
ThreadingHTTPServer, in a daemon thread) that serves one self-contained page
(dashboard.html next to this module: HTML, CSS and script inline, nothing
fetched from the network) and a server-sent-events stream that pushes a JSON
summary of `list_pools()` every 0.4 s. The page draws everything from that
stream: rates, the throughput sparkline and the busy bars come from the
difference between successive events, so the server keeps no history and
any number of tabs can watch.

The stats blocks are read, read-only, from shared memory: the page sees a
pool whose own Python thread is stuck in user code, and a pool of another
process (``python -m shoal dashboard --pid PID``).

Every URL needs the random token the server was started with
(``/?token=...``): the page can show arguments and tracebacks, so another
user of the machine, or a web page in the browser that guesses the port,
must not read it. Requests without the token get 403.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs, urlsplit

from .reader import process_exists
from .serving import BackgroundServer, listen_error
from .snapshot import DURATION_BOUNDS_S, PoolSnapshot, WorkerSnapshot

_log = logging.getLogger("shoal")

#: Seconds between two events of the stream.
PUSH_INTERVAL_S = 0.4
#: The most recent errors a pool's summary carries (newest first, all workers).
MAX_ERRORS = 12
#: The page's Content-Security-Policy: its own inline script and style, its
#: own stream, nothing else (no fonts, scripts or images from anywhere).
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")


def _page() -> bytes:
    return Path(__file__).with_name("dashboard.html").read_bytes()


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def _worker_summary(w: WorkerSnapshot) -> dict[str, Any]:
    return {
        "slot": w.slot,
        "pid": w.pid,
        "state": w.state,
        "job": w.job,
        "running_for_s": w.running_for_s,
        "tasks_completed": w.tasks_completed,
        "tasks_failed": w.tasks_failed,
        "jobs_completed": w.jobs_completed,
        "busy_s": w.busy_s,
        "alive_s": w.alive_s,
        "cpu_s": w.cpu_s,
        "rss_bytes": w.rss_bytes,
        "restarts": w.restarts,
        "restart_causes": dict(w.restart_causes),
        "last_exit": w.last_exit,
        "duration_buckets": list(w.duration_buckets),
    }


def pool_summary(p: PoolSnapshot) -> dict[str, Any]:
    """One pool as the page draws it (plain JSON types)."""
    newest = sorted(((e, w.slot) for w in p.worker_stats for e in w.recent_errors), key=lambda es: -es[0].at)
    errors = [{"slot": slot, "job": e.job, "at": e.at, "text": e.text} for e, slot in newest[:MAX_ERRORS]]
    return {
        "name": p.name,
        "pid": p.pid,
        "kind": p.kind,
        "label": p.label,
        "state": p.state,  # a pool of a killed process is not listed (list_pools)
        "workers": p.workers,
        "created": p.created,
        "uptime_s": p.uptime_s,
        "submitted": p.submitted,
        "completed": p.completed,
        "failed": p.failed,
        "cancelled": p.cancelled,
        "retried": p.retried,
        "timed_out": p.timed_out,
        "workers_started": p.workers_started,
        "workers_lost": p.workers_lost,
        "pending": p.pending,
        "in_flight": p.in_flight,
        "arena_used_bytes": p.arena_used_bytes,
        "arena_peak_bytes": p.arena_peak_bytes,
        "arena_limit_bytes": p.arena_limit_bytes,
        "tasks_completed": p.tasks_completed,
        "tasks_failed": p.tasks_failed,
        "restarts": p.restarts,
        "taken_at": p.taken_at,
        "worker_stats": [_worker_summary(w) for w in p.worker_stats],
        "errors": errors,
    }


def summary(pid: Optional[int] = None) -> dict[str, Any]:
    """What one event of the stream carries: every pool (of process `pid`
    only, if given), the histogram's bucket bounds, and a one-line `note`
    when there is nothing to show or the pools could not be read."""
    from .reader import list_pools

    note = ""
    pools: list[PoolSnapshot] = []
    try:
        pools = list_pools(pid)
    except Exception as exc:  # the page says what went wrong; the stream goes on
        note = f"cannot read the pools' stats: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if not pools and not note:
        if pid is None:
            note = "no shoal pools running"
        elif not process_exists(pid):
            note = f"no shoal pools running: process {pid} does not exist"
        else:
            note = f"no shoal pools running in process {pid}"
    return {
        "time": time.time(),
        "monotonic": time.monotonic(),
        "pid": pid,
        "host": socket.gethostname(),
        "note": note,
        "bounds_s": [_finite(b) for b in DURATION_BOUNDS_S],
        "pools": [pool_summary(p) for p in pools],
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # streams end on their own (the stop event) within PUSH_INTERVAL_S

    def __init__(self, address: tuple[str, int], token: str, pid: Optional[int]) -> None:
        self.token = token
        self.pid = pid
        self.stopping = threading.Event()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer, a malformed request: nothing
        # for the user to act on, and the server goes on.
        _log.debug("shoal dashboard: error serving %s", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "shoal-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("shoal dashboard: %s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            pass  # the client went away
        except Exception:
            _log.debug("shoal dashboard: failed to answer %s", self.path, exc_info=True)
            try:
                self._send(500, b"shoal dashboard: internal error (see the shoal logger at DEBUG)\n",
                           "text/plain; charset=utf-8")
            except OSError:
                pass

    def _route(self) -> None:
        url = urlsplit(self.path)
        token = parse_qs(url.query).get("token", [""])[0]
        if not secrets.compare_digest(token.encode(), self.server.token.encode()):
            self._send(403, b"shoal dashboard: forbidden: open the URL the dashboard printed, token included\n",
                       "text/plain; charset=utf-8")
            return
        if url.path in ("/", "/index.html"):
            self._send(200, _page(), "text/html; charset=utf-8")
        elif url.path == "/snapshot.json":
            self._send(200, json.dumps(summary(self.server.pid)).encode(), "application/json")
        elif url.path == "/events":
            self._stream()
        else:
            self._send(404, b"shoal dashboard: not found\n", "text/plain; charset=utf-8")

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        stopping = self.server.stopping
        self.wfile.write(b"retry: 1000\n\n")
        while not stopping.is_set():
            data = json.dumps(summary(self.server.pid), separators=(",", ":"))
            self.wfile.write(b"data: " + data.encode() + b"\n\n")
            self.wfile.flush()
            stopping.wait(PUSH_INTERVAL_S)


class Dashboard(BackgroundServer):
    """A running dashboard: open `.url` in a browser. `close()` (or leaving a
    ``with`` block) stops it and frees the port; the page then says so."""

    def __init__(self, server: _Server, host: str) -> None:
        super().__init__(server, host, f"/?token={server.token}", "shoal-dashboard")
        self._stream_server = server

    def _stopping(self) -> None:
        self._stream_server.stopping.set()  # the event streams end, so shutdown() need not wait for them


def serve_dashboard(port: int = 0, host: str = "127.0.0.1", pid: Optional[int] = None) -> Dashboard:
    """Serves the live dashboard of this user's shoal pools (of process `pid`
    only, if given) on `host`:`port` (0: a free port) and returns at once;
    the server runs in a daemon thread until `close()`.

        from shoal.obs.dashboard import serve_dashboard

        with serve_dashboard() as dash:
            print(dash.url)          # http://127.0.0.1:41234/?token=...

    The URL carries a random token; requests without it get 403. Raises
    OSError with a one-line message if the port is in use or the address
    cannot be bound, ValueError for a port outside 0-65535.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not a port (0-65535)")
    token = secrets.token_urlsafe(18)
    server_cls = _Server6 if ":" in host else _Server
    try:
        server = server_cls((host, port), token, pid)
    except OSError as exc:
        raise listen_error(exc, host, port) from None
    dash = Dashboard(server, host)
    # At DEBUG: its callers say where it is (the CLI prints and logs the URL,
    # Executor(dashboard=True) logs it at INFO).
    _log.debug("shoal dashboard: serving %s", dash.url)
    return dash
