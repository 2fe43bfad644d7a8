"""``python -m shoal dashboard``: serve the live web page of this user's pools.

The page reads the pools' stats blocks from shared memory, so it works for
pools of any process of this user, started before or after it; ``--pid``
narrows it to one process. The server listens on 127.0.0.1 and a free port
unless told otherwise, prints its URL (token included) and runs until Ctrl-C
or SIGTERM, which end it with exit code 0.

This module stays import-light: ``python -m shoal`` imports it to build its
argument parser, and the server code is imported only when the command runs.
"""
from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Optional

_log = logging.getLogger("shoal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; the page is for this machine's user)")
    parser.add_argument("--pid", type=int, default=None, help="show only the pools of this process")


def run(args: argparse.Namespace) -> int:
    # Ctrl-C and SIGTERM set an event instead of raising wherever the main
    # thread happens to be (an import, the server's start): the command then
    # closes the server and exits 0, without a traceback.
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    # A signal the shell set to be ignored (a job started with `&` by a
    # script ignores SIGINT) stays ignored, as Python itself leaves it.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        return _serve(args, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(args: argparse.Namespace, stop: threading.Event) -> int:
    from ..obs.dashboard import serve_dashboard, summary

    port: int = args.port
    host: str = args.host
    pid: Optional[int] = args.pid
    if not 0 <= port <= 65535:
        print(f"shoal dashboard: --port {port} is not a port (0-65535)", file=sys.stderr)
        return 2
    if pid is not None and pid <= 0:
        print(f"shoal dashboard: --pid {pid} is not a process id", file=sys.stderr)
        return 2
    try:
        dash = serve_dashboard(port=port, host=host, pid=pid)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"shoal dashboard: port {port} on {host} is in use; pass --port 0 for a free one", file=sys.stderr)
        else:
            print(f"shoal dashboard: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with dash:
        print(dash.url, flush=True)
        _log.info("shoal dashboard: serving %s", dash.url)
        if pid is not None:
            now = summary(pid)
            if not now["pools"]:
                print(f"shoal dashboard: {now['note']}; the page shows its pools once it has some",
                      file=sys.stderr, flush=True)
        while not stop.wait(0.5):  # a timed wait: signal handlers run in between
            pass
    return 0
