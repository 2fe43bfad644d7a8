"""Finding this user's pools and reading their stats blocks (read-only).

Each pool's block is a ``shoal-<pid>-<hex>`` segment under /dev/shm whose
first word is the stats magic; ``_core.list_stats_blocks`` finds them and
``_core.StatsBlockReader`` maps one read-only and copies it into a dict of
raw numbers (ns, bytes), which this module turns into a PoolSnapshot. CPU
time and resident memory of each worker come from /proc, read here.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Optional

from .. import _core
from .snapshot import POOL_STATES, WORKER_STATES, PoolSnapshot, SlowTask, TaskError, WorkerSnapshot

#: How a slot's last worker ended (ExitCause in stats_block.hpp), as restart_causes names it.
EXIT_CAUSES = ("none", "exit", "signal", "timeout", "memory", "retired", "corrupt")
_ALIVE = frozenset(("starting", "idle", "running", "exiting"))
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class StatsError(Exception):
    """A stats block that cannot be read: gone (its pool ended), not a shoal
    pool's, or of another layout version. str() is a one-line message."""


def list_pools(pid: Optional[int] = None) -> list[PoolSnapshot]:
    """Snapshots of every live shoal pool of this user on this machine (of
    process `pid` only, if given), oldest first. Blocks that vanish while
    being read, blocks of another layout version, and blocks of a process
    that was killed (its names are reclaimed by the next shoal to start) are
    skipped."""
    pools = []
    for name in _core.list_stats_blocks(pid or 0):
        try:
            snap = read_pool(name)
        except StatsError:
            continue
        if snap.state != "closed" and process_exists(snap.pid):
            pools.append(snap)
    pools.sort(key=lambda p: (p.created, p.name))
    return pools


def read_pool(name: str) -> PoolSnapshot:
    """A snapshot of the pool whose stats block is /dev/shm/`name`; raises
    StatsError if it is gone, not a pool's, or of another layout version."""
    try:
        raw = _core.StatsBlockReader.open(name).snapshot()
    except FileNotFoundError:
        raise StatsError(f"pool {name} is gone: its process has closed it or exited") from None
    except (RuntimeError, OSError) as exc:
        raise StatsError(str(exc).splitlines()[0] if str(exc) else f"cannot read {name}") from None
    return snapshot_from_raw(raw)


def snapshot_from_raw(raw: dict[str, Any]) -> PoolSnapshot:
    """A PoolSnapshot of what ``snapshot()`` of a stats block returned."""
    now = raw["now_mono_ns"]
    workers = tuple(_worker(w, now) for w in raw["workers"])
    return PoolSnapshot(
        name=raw["name"],
        pid=raw["owner_pid"],
        kind=raw["kind"],
        label=raw["label"],
        state=_name(POOL_STATES, raw["state"]),
        workers=len(workers),
        created=raw["created_unix_ns"] / 1e9,
        uptime_s=max(0, now - raw["created_mono_ns"]) / 1e9,
        submitted=raw["submitted"],
        completed=raw["completed"],
        failed=raw["failed"],
        cancelled=raw["cancelled"],
        retried=raw["retried"],
        timed_out=raw["timed_out"],
        workers_started=raw["workers_started"],
        workers_lost=raw["workers_lost"],
        pending=raw["pending"],
        in_flight=raw["in_flight"],
        arena_used_bytes=raw["arena_used"],
        arena_peak_bytes=raw["arena_peak"],
        arena_limit_bytes=raw["arena_limit"],
        worker_stats=workers,
        taken_at=time.monotonic(),
        tracing=raw["trace_on"],
    )


def process_exists(pid: int) -> bool:
    """Whether process `pid` lives (a pool killed with SIGKILL leaves its stats block behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists, its pools are not ours to read
        return True
    return True


def _name(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"unknown({value})"


def _worker(w: dict[str, Any], now: int) -> WorkerSnapshot:
    state = _name(WORKER_STATES, w["state"])
    alive = state in _ALIVE and w["pid"] > 0
    started, ready = w["started_ns"], w["ready_ns"]
    cpu_s, rss = _proc_usage(w["pid"]) if alive else (0.0, 0)
    causes = {name: n for name, n in zip(EXIT_CAUSES, w["restart_causes"]) if n and name != "none"}
    return WorkerSnapshot(
        slot=w["slot"],
        pid=w["pid"],
        state=state,
        job=w["job"] if state == "running" else 0,
        running_for_s=max(0, now - w["job_since_ns"]) / 1e9 if state == "running" and w["job"] else None,
        tasks_completed=w["tasks_completed"],
        tasks_failed=w["tasks_failed"],
        jobs_completed=w["jobs_completed"],
        busy_s=w["busy_ns"] / 1e9,
        deserialize_s=w["deserialize_ns"] / 1e9,
        serialize_s=w["serialize_ns"] / 1e9,
        alive_s=max(0, now - started) / 1e9 if alive and started else 0.0,
        startup_s=(ready - started) / 1e9 if ready >= started > 0 else 0.0,
        initializer_s=w["initializer_ns"] / 1e9,
        bytes_in=w["bytes_in"],
        bytes_out=w["bytes_out"],
        arena_bytes_in=w["arena_bytes_in"],
        arena_bytes_out=w["arena_bytes_out"],
        restarts=w["restarts"],
        restart_causes=causes,
        last_exit=describe_exit(w["last_exit_cause"], w["last_exit_value"]),
        cpu_s=cpu_s,
        rss_bytes=rss,
        duration_buckets=tuple(w["duration_buckets"]),
        slowest=tuple(
            sorted(
                (SlowTask(ns / 1e9, job, items, args) for ns, job, items, args in w["slowest"]),
                key=lambda t: -t.duration_s,
            )
        ),
        recent_errors=tuple(TaskError(job, at / 1e9, text) for job, at, text in w["errors"]),
    )


def describe_exit(cause: int, value: int) -> str:
    """How a slot's last worker ended, in words ("" if none has)."""
    name = _name(EXIT_CAUSES, cause)
    if name == "none":
        return ""
    if name == "exit":
        return f"exited with code {value}"
    if name == "signal":
        try:
            return f"killed by {signal.Signals(value).name}"
        except ValueError:
            return f"killed by signal {value}"
    return {
        "timeout": "stopped: its task ran past the time limit",
        "memory": "stopped: past the memory limit",
        "retired": "retired (max_tasks_per_child)",
        "corrupt": "stopped: its shared memory was corrupted",
    }.get(name, name)


def _proc_usage(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, resident bytes) of a process; zeros if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read().split()
        # After the command name, which may hold spaces and parentheses.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(statm[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0.0, 0
