"""Typed snapshots of a pool's stats block.

Every pool keeps a small shared-memory block (cpp/include/shoal/obs/stats_block.hpp)
that its engine and its workers update with relaxed atomic stores as they go:
counters, each worker's state and running job, time split into work and
(de)serialisation, a task-duration histogram, the slowest tasks and recent
errors. Any process of the same user can read it, read-only and without the
pool's cooperation, so the views (`stats()`, `insights()`, `shoal top`, the
dashboard, Prometheus) see a pool whose own Python thread is stuck in user code.

A snapshot is one copy of the block at one moment. The counters of one
worker are each exact, but not taken at the same instant as one another
(a task may be counted as completed and its time not yet added); rates come
from the difference between two snapshots.

Durations are seconds and sizes bytes (floats and ints): base units, as
Prometheus wants them. CPU time and resident memory are read from
/proc/<pid> of each worker by the reading process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

#: States a worker slot is in, as `WorkerSnapshot.state` names them.
WORKER_STATES = ("empty", "starting", "idle", "running", "exiting", "dead")
#: States of a pool, as `PoolSnapshot.state` names them.
POOL_STATES = ("running", "closing", "closed", "broken")


@dataclass(frozen=True)
class SlowTask:
    """One of a worker's slowest tasks so far."""

    duration_s: float
    job: int  # the engine's job id
    items: int  # 1 for a submit; a map chunk's item count (duration_s is the chunk's)
    args: str  # a short repr of its arguments (for a chunk: of its first item)


@dataclass(frozen=True)
class TaskError:
    """A task that raised in a worker: the exception's traceback as text."""

    job: int
    at: float  # time.time() when it was recorded
    text: str  # "Traceback (most recent call last): ..." (at most ~2 KB)


@dataclass(frozen=True)
class WorkerSnapshot:
    slot: int  # 0..workers-1, the worker's place in the pool (shoal.worker_id())
    pid: int  # 0 before its first start
    state: str  # one of WORKER_STATES
    job: int  # the job it runs now; 0 when none
    running_for_s: Optional[float]  # how long the current job has run; None when idle
    tasks_completed: int  # items finished without an exception (a submit counts 1, a map item 1)
    tasks_failed: int  # items that raised
    jobs_completed: int  # results sent (a map chunk is one job)
    busy_s: float  # time running jobs, (de)serialisation included
    deserialize_s: float  # unpickling arguments
    serialize_s: float  # pickling results
    alive_s: float  # since this worker process started (0 when none is running)
    startup_s: float  # from its start to ready (interpreter start, imports, initializer)
    initializer_s: float  # the pool's initializer alone
    bytes_in: int  # job payloads received (pickles inline in the ring or spilled)
    bytes_out: int  # result payloads sent
    arena_bytes_in: int  # the arguments' big buffers, received through the arena (zero-copy)
    arena_bytes_out: int  # the results' big buffers, sent through the arena
    restarts: int  # replacements of this slot's worker
    # How its replaced workers ended: "exit" (a non-zero exit code), "signal",
    # "timeout", "memory" (limit), "retired" (max_tasks_per_child), "corrupt".
    restart_causes: dict[str, int]
    last_exit: str  # how the last worker of this slot ended ("" if none has): "killed by SIGKILL", ...
    cpu_s: float  # user+system CPU time of the current process (from /proc); 0 if unreadable
    rss_bytes: int  # resident memory of the current process (from /proc); 0 if unreadable
    # Task durations: counts per bucket; bucket i holds durations up to
    # DURATION_BOUNDS_S[i] (the last is +inf). A map chunk of n items adds n
    # samples of its mean item time.
    duration_buckets: tuple[int, ...]
    slowest: tuple[SlowTask, ...]  # slowest first
    recent_errors: tuple[TaskError, ...]  # newest first

    @property
    def idle_s(self) -> float:
        return max(0.0, self.alive_s - self.busy_s)


@dataclass(frozen=True)
class PoolSnapshot:
    name: str  # the stats block's shared-memory name (/dev/shm/<name>)
    pid: int  # the pool's process
    kind: str  # "Executor" or "Pool"
    label: str  # a name the user gave (Executor(name=...)), else ""
    state: str  # one of POOL_STATES
    workers: int  # configured size
    created: float  # time.time() when the pool started
    uptime_s: float
    submitted: int  # jobs (a map chunk is one job)
    completed: int  # jobs that ended with a result or with their task's exception
    failed: int  # jobs that ended otherwise: a lost worker, a timeout, the memory limit, a broken pool
    cancelled: int
    retried: int  # re-runs after a worker died under a job
    timed_out: int
    workers_started: int
    workers_lost: int
    pending: int  # jobs queued in the engine, not yet with a worker
    in_flight: int  # jobs with workers (running or in their inboxes)
    arena_used_bytes: int
    arena_peak_bytes: int
    arena_limit_bytes: int
    worker_stats: tuple[WorkerSnapshot, ...] = field(default_factory=tuple)
    taken_at: float = 0.0  # time.monotonic() in the reading process
    tracing: bool = False  # a shoal.trace() records this pool now

    @property
    def ended(self) -> int:
        """Jobs that ended in any way: completed, failed or cancelled."""
        return self.completed + self.failed + self.cancelled

    @property
    def tasks_completed(self) -> int:
        return sum(w.tasks_completed for w in self.worker_stats)

    @property
    def tasks_failed(self) -> int:
        return sum(w.tasks_failed for w in self.worker_stats)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.worker_stats)


#: Upper bounds (seconds) of the task-duration histogram's buckets: 1 µs,
#: 2 µs, 4 µs, ... 2**30 µs (about 18 minutes), then +inf.
DURATION_BOUNDS_S: tuple[float, ...] = tuple([2.0**i * 1e-6 for i in range(31)] + [float("inf")])
