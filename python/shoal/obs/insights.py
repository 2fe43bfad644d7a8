"""``Executor.insights()`` / ``Pool.insights()``: a pool's stats, summed up for a person.

Built from one PoolSnapshot: per worker the share of its life spent working,
(de)serialising and waiting, and its start-up; task duration percentiles
(from the histogram, so each is an upper bound: "at most"); the slowest
tasks with their arguments; restarts and their causes; and hints when the
numbers show a common mistake (tasks too small for the per-task overhead,
pickling heavier than the work, an uneven load).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .snapshot import DURATION_BOUNDS_S, PoolSnapshot, SlowTask, WorkerSnapshot

# A job shorter than this on average costs about as much to hand over as to run.
_SMALL_TASK_S = 50e-6
_TOO_SMALL_SHARE = 0.5  # ... when workers spend less than this share of their time working
_UNEVEN = 1.5  # the busiest worker worked this many times the mean
_PICKLING_HEAVY = 0.5  # (de)serialisation above this share of the work
_BIG_PAYLOAD = 16 * 1024  # ... of payloads this big per job (bytes pickled in and out)


@dataclass(frozen=True)
class WorkerInsight:
    slot: int
    pid: int
    state: str
    tasks: int  # completed + failed
    working: float  # share of its life running tasks (0..1), (de)serialisation excluded
    serialising: float  # share spent unpickling arguments and pickling results
    waiting: float  # share idle, waiting for work
    startup_s: float
    initializer_s: float
    restarts: int
    restart_causes: dict[str, int]


def _share(part: float, whole: float) -> float:
    return min(1.0, max(0.0, part / whole)) if whole > 0 else 0.0


def percentile_bound(buckets: tuple[int, ...], q: float) -> Optional[float]:
    """The upper bound (seconds) of the histogram bucket holding quantile `q`; None if empty."""
    total = sum(buckets)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for count, bound in zip(buckets, DURATION_BOUNDS_S):
        seen += count
        if seen >= rank and count:
            return bound
    return DURATION_BOUNDS_S[-1]


def format_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s == float("inf"):
        return "longer"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


class Insights:
    """What a pool's stats say, for a person: ``print(ex.insights())``.

    The parts are attributes too: ``workers`` (WorkerInsight per slot),
    ``percentiles`` ({"p50": s, "p90": s, "p99": s} upper bounds, or None),
    ``slowest`` ((worker slot, SlowTask), slowest first), ``hints`` (str).
    """

    def __init__(self, snapshot: PoolSnapshot) -> None:
        self.snapshot = snapshot
        self.workers = tuple(self._worker(w) for w in snapshot.worker_stats)
        buckets = tuple(map(sum, zip(*(w.duration_buckets for w in snapshot.worker_stats)))) or ()
        self.percentiles = {f"p{round(q * 100)}": percentile_bound(buckets, q) for q in (0.5, 0.9, 0.99)}
        self.slowest: tuple[tuple[int, SlowTask], ...] = tuple(
            sorted(((w.slot, t) for w in snapshot.worker_stats for t in w.slowest), key=lambda st: -st[1].duration_s)[:5]
        )
        self.hints = tuple(self._hints())

    @staticmethod
    def _worker(w: WorkerSnapshot) -> WorkerInsight:
        pickling = w.deserialize_s + w.serialize_s
        work = max(0.0, w.busy_s - pickling)
        life = max(w.alive_s, w.busy_s)
        return WorkerInsight(
            slot=w.slot, pid=w.pid, state=w.state, tasks=w.tasks_completed + w.tasks_failed,
            working=_share(work, life), serialising=_share(pickling, life),
            waiting=_share(life - w.busy_s, life), startup_s=w.startup_s, initializer_s=w.initializer_s,
            restarts=w.restarts, restart_causes=dict(w.restart_causes),
        )

    def _hints(self) -> list[str]:
        snap, hints = self.snapshot, []
        ws = snap.worker_stats
        tasks = sum(w.tasks_completed + w.tasks_failed for w in ws)
        jobs = sum(w.jobs_completed for w in ws)
        busy = sum(w.busy_s for w in ws)
        pickling = sum(w.deserialize_s + w.serialize_s for w in ws)
        life = sum(max(w.alive_s, w.busy_s) for w in ws)
        # The hand-over costs per job (a map chunk is one): what is small is a job's work.
        if jobs >= 100 and busy / jobs < _SMALL_TASK_S and _share(busy, life) < _TOO_SMALL_SHARE:
            how = "use map() with a larger chunksize" if jobs < tasks else "use map() (it sends tasks in chunks)"
            hints.append(
                f"tasks are too small for the pool: {format_seconds(busy / jobs)} of work per job on average, and "
                f"workers worked {_share(busy, life):.0%} of the time; the hand-over costs about as much as the "
                f"work. {how.capitalize()}, or give each task more to do."
            )
        work = busy - pickling
        moved = sum(w.bytes_in + w.bytes_out for w in ws)
        # Heavy pickling of big payloads (tiny ones are the small-task case above).
        if jobs >= 10 and pickling > _PICKLING_HEAVY * max(work, 1e-9) and moved / jobs >= _BIG_PAYLOAD:
            hints.append(
                f"(de)serialisation takes {format_seconds(pickling)} against {format_seconds(work)} of work: pass "
                "big arrays as shoal.SharedArray (zero-copy) and return less."
            )
        active = [w for w in ws if w.busy_s > 0]
        if len(ws) >= 2 and tasks >= 4 * len(ws) and active:
            mean = busy / len(ws)
            top = max(ws, key=lambda w: w.busy_s)
            if mean > 0 and top.busy_s > _UNEVEN * mean:
                hints.append(
                    f"the load is unbalanced: worker {top.slot} worked {format_seconds(top.busy_s)}, "
                    f"{top.busy_s / mean:.1f}x the mean; a smaller chunksize spreads long tasks better."
                )
        restarts = sum(w.restarts for w in ws)
        if restarts:
            causes: dict[str, int] = {}
            for w in ws:
                for cause, n in w.restart_causes.items():
                    causes[cause] = causes.get(cause, 0) + n
            crashes = {c: n for c, n in causes.items() if c != "retired"}
            if crashes:
                hints.append(
                    "workers were replaced after " + ", ".join(f"{n} {c}" for c, n in sorted(crashes.items())) +
                    ": see the log (logger 'shoal') for which task was running."
                )
        return hints

    def __str__(self) -> str:
        snap = self.snapshot
        lines = [
            f"shoal {snap.kind} {snap.label or ''} (pid {snap.pid}), {snap.workers} workers, "
            f"up {format_seconds(snap.uptime_s)}, {snap.state}".replace("  ", " "),
            f"  jobs: {snap.submitted} submitted, {snap.completed} completed, {snap.failed} failed, "
            f"{snap.cancelled} cancelled, {snap.retried} retried; {snap.pending} queued, {snap.in_flight} with workers",
            f"  tasks: {snap.tasks_completed} completed, {snap.tasks_failed} raised",
            "  task duration: " + ", ".join(f"{k} ≤ {format_seconds(v)}" for k, v in self.percentiles.items()),
            "",
            "  worker    pid      state     tasks  working  (de)ser.  waiting  start-up  initializer  restarts",
        ]
        for w in self.workers:
            causes = ", ".join(f"{n} {c}" for c, n in sorted(w.restart_causes.items()))
            lines.append(
                f"  {w.slot:>6}  {w.pid:>7}  {w.state:<8} {w.tasks:>6}  {w.working:>7.0%}  {w.serialising:>8.0%}  "
                f"{w.waiting:>7.0%}  {format_seconds(w.startup_s):>8}  {format_seconds(w.initializer_s):>11}  "
                f"{w.restarts:>8}" + (f" ({causes})" if causes else "")
            )
        if self.slowest:
            lines += ["", "  slowest tasks:"]
            for slot, t in self.slowest:
                what = "chunk of" if t.items > 1 else "task"  # a chunk's args begin with its item count
                lines.append(f"    {format_seconds(t.duration_s):>9}  worker {slot}  {what} {t.args}")
        errors = sorted((e for w in snap.worker_stats for e in w.recent_errors), key=lambda e: -e.at)
        if errors:
            last = errors[0].text.strip().splitlines()
            lines += ["", f"  recent error (of {snap.tasks_failed} raised): {last[-1] if last else ''}"]
        if self.hints:
            lines += ["", "  hints:"] + [f"    - {h}" for h in self.hints]
        return "\n".join(lines)

    __repr__ = __str__
