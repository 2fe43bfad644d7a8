"""Entry point of shoal's child processes (the fork server and spawned workers).

Started as ``python -c <code> <sys.path json> <mode> <segment> <owner pid>
<config json> [slot]`` so that the child imports modules exactly as the parent
does (same sys.path), without depending on the current directory.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
from typing import Any, Optional

_CODE = "import sys,json;sys.path[:0]=json.loads(sys.argv[1]);from shoal._bootstrap import main;main(sys.argv[2:])"


def child_argv(mode: str, config: dict[str, Any]) -> list[str]:
    """The argv the engine starts (it fills in the segment; spawn mode appends the slot)."""
    paths = [p if p else os.getcwd() for p in sys.path]
    return [
        sys.executable,
        "-c",
        _CODE,
        json.dumps(paths),
        mode,
        "{segment}",
        str(os.getpid()),
        json.dumps(config),
    ]


def _no_other_python_threads() -> bool:
    # Only Python threads can hold the locks the child's Python code would need
    # (the import lock, logging's, a user's). Native pools such as OpenBLAS's
    # idle threads register their own fork handlers: the same assumption that
    # multiprocessing's default "fork" start method makes.
    return threading.active_count() == 1


def fork_fork_server(config: dict[str, Any]) -> Optional[tuple[int, int]]:
    """Forks this process into a fork server, if that is safe; returns (pid, socket fd).

    Forking is safe while no other Python thread runs (see
    _no_other_python_threads). Then the server starts in a millisecond and its
    workers inherit every module already imported. Otherwise (None) the engine
    starts a clean interpreter instead.
    """
    if not _no_other_python_threads():
        return None
    from . import _core, _worker

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the fork server
        try:
            ours.close()
            slot, segment = _core.serve_forks(theirs.detach())  # the worker's copy is closed in C++
            _worker.main(segment, slot, config)  # never returns
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    theirs.close()
    return pid, ours.detach()


def _preload(config: dict[str, Any]) -> None:
    for name in config.get("preload", ()):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - preloading is an optimisation only
            pass


def main(args: list[str]) -> None:
    from . import _core, _worker

    mode, segment, owner_pid, config_json, *rest = args
    config = json.loads(config_json)
    if mode == "forkserver":
        _preload(config)
        slot, segment = _core.serve_forks(3)  # returns in each forked worker
        _worker.main(segment, slot, config)
    else:
        _core.die_with_parent(int(owner_pid))
        _worker.main(segment, int(rest[0]), config)
