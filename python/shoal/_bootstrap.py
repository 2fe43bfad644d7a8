"""Entry point of shoal's child processes (the fork server and spawned workers).

Started as ``python -c <code> <sys.path json> <mode> <segment> <owner pid>
<config json> [slot]`` so that the child imports modules exactly as the parent
does (same sys.path), without depending on the current directory.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

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
    max_tasks = int(config.get("max_tasks", 0))
    if mode == "forkserver":
        _preload(config)
        slot = _core.serve_forks(3)  # returns in each forked worker
        _worker.main(segment, slot, max_tasks)
    else:
        _core.die_with_parent(int(owner_pid))
        _worker.main(segment, int(rest[0]), max_tasks)
