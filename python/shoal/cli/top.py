"""``python -m shoal top``: a live terminal view of every shoal pool of this user.

Data flow, once per refresh (``--interval``, 0.5 s by default):

1. ``shoal.obs.reader.list_pools()`` copies each pool's stats block out of
   shared memory (read-only; the pools do nothing for it), plus each worker's
   CPU time and resident memory from /proc.
2. A ``Sampler`` pairs each snapshot with the previous one of the same pool
   (by its block's name) and each worker with its previous sample (by slot and
   pid): tasks/s, CPU % and the busy share are differences over the interval,
   since a single snapshot only holds totals.
3. ``render()`` turns that into rich tables: one section per pool, a row per
   worker. The live view shows it with ``rich.live.Live`` in the terminal's
   alternate screen and reads ``q`` from the keyboard between refreshes;
   ``--once`` takes two samples one interval apart and prints the second as
   plain text (no colours, no escape codes) for scripts; when stdout is not a
   terminal, the live view prints such a plain view every interval instead.

A pool that ends while watched is gone from the next refresh (a line under
the view says so for a while); a process without pools is a one-line note.
This module stays import-light: ``python -m shoal`` imports it to build its
argument parser, so rich and the reader are imported only when it runs.
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TextIO

from ..obs.reader import process_exists

if TYPE_CHECKING:
    from rich.console import Console, JustifyMethod, RenderableType
    from rich.text import Text

    from ..obs.snapshot import PoolSnapshot, WorkerSnapshot

#: How long a line saying that a pool ended stays under the live view (seconds).
ENDED_NOTE_S = 10.0
_POOL_STYLES = {"running": "bold green", "closing": "yellow", "closed": "dim", "broken": "bold red"}
_WORKER_STYLES = {"starting": "yellow", "idle": "cyan", "running": "green", "exiting": "yellow",
                  "dead": "bold red", "empty": "dim"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=_positive_int, default=None, help="show only the pools of this process")
    parser.add_argument("--once", action="store_true",
                        help="print one plain-text snapshot (no colours) and exit, for scripts")
    parser.add_argument("--interval", type=_interval, default=0.5, metavar="SECONDS",
                        help="seconds between refreshes (default 0.5); --once samples twice this far apart")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a process id (a positive number)")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} s is out of range (0.05 to 3600 seconds)")
    return value


def run(args: argparse.Namespace) -> int:
    pid: Optional[int] = args.pid
    interval: float = args.interval
    try:
        if args.once:
            return _run_once(pid, interval)
        return _run_live(pid, interval)
    except KeyboardInterrupt:  # Ctrl-C is how a user leaves: not an error
        return 0


# --- sampling -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRates:
    """What one worker did over the last interval (None: no earlier sample of this process)."""

    cpu_percent: Optional[float]  # CPU time used / wall time, in % of one core
    busy_share: Optional[float]  # share of the interval spent on tasks (0..1); since its start when no interval


@dataclass(frozen=True)
class PoolView:
    """A pool's snapshot with the rates computed from its previous one."""

    snap: PoolSnapshot
    tasks_per_s: Optional[float]  # items ended (completed or raised) per second; None on the first sample
    workers: tuple[tuple[WorkerSnapshot, WorkerRates], ...]


@dataclass(frozen=True)
class Sample:
    """One refresh: the pools, or a one-line note of why there are none, and pools that ended recently."""

    pools: tuple[PoolView, ...]
    note: str  # "" when there are pools
    ended: tuple[str, ...] = field(default_factory=tuple)
    at: float = field(default_factory=time.time)


def _busy_so_far(w: WorkerSnapshot) -> float:
    """Seconds this worker spent on tasks, its running task included (the block
    adds a task's time only when it ends, so a long task would read as idle)."""
    return w.busy_s + (w.running_for_s or 0.0)


def _clamp(share: float) -> float:
    return min(1.0, max(0.0, share))


class Sampler:
    """Takes snapshots of this user's pools (of one process with `pid`) and
    computes rates against the previous snapshot of each pool and worker."""

    def __init__(self, pid: Optional[int] = None) -> None:
        self.pid = pid
        self._prev: dict[str, PoolSnapshot] = {}
        self._ended: dict[str, tuple[float, str]] = {}  # block name -> (monotonic time it ended, note)

    def sample(self) -> Sample:
        from ..obs.reader import list_pools

        try:
            snaps = list_pools(self.pid)  # pools of live processes only
        except OSError as exc:  # /dev/shm unreadable: say so, keep trying
            return Sample((), f"cannot read this user's pools: {exc.strerror or exc}")
        now = time.monotonic()
        views = tuple(self._view(s) for s in snaps)
        seen = {s.name for s in snaps}
        for name, old in self._prev.items():
            if name not in seen:
                self._ended[name] = (now, f"{_pool_title(old)} (pid {old.pid}) ended")
        self._prev = {s.name: s for s in snaps}
        self._ended = {n: e for n, e in self._ended.items() if now - e[0] < ENDED_NOTE_S and n not in seen}
        return Sample(views, "" if views else self._why_none(), tuple(e[1] for e in self._ended.values()))

    def _view(self, snap: PoolSnapshot) -> PoolView:
        prev = self._prev.get(snap.name)
        dt = snap.taken_at - prev.taken_at if prev is not None else 0.0
        if prev is None or dt <= 0:
            rate: Optional[float] = None
        else:
            ended = snap.tasks_completed + snap.tasks_failed - prev.tasks_completed - prev.tasks_failed
            rate = max(0, ended) / dt
        before = {(w.slot, w.pid): w for w in prev.worker_stats} if prev is not None else {}
        rows = []
        for w in snap.worker_stats:
            old = before.get((w.slot, w.pid)) if w.pid else None
            if old is not None and dt > 0:
                cpu: Optional[float] = max(0.0, w.cpu_s - old.cpu_s) / dt * 100
                busy: Optional[float] = _clamp((_busy_so_far(w) - _busy_so_far(old)) / dt)
            else:
                cpu = None
                busy = _clamp(_busy_so_far(w) / w.alive_s) if w.alive_s > 0 else None
            rows.append((w, WorkerRates(cpu, busy)))
        return PoolView(snap, rate, tuple(rows))

    def _why_none(self) -> str:
        if self.pid is None:
            return "no shoal pools of this user are running"
        if not process_exists(self.pid):
            return f"no process {self.pid} is running (so no shoal pool either)"
        return f"process {self.pid} has no shoal pool"


def format_duration(s: float) -> str:
    """A span of time as people read one: 850 ms, 12.3 s, 4m 05s, 2h 10m."""
    if s < 0.9995:
        return f"{s * 1e3:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # not reached


def _pool_title(snap: PoolSnapshot) -> str:
    return f"{snap.kind} {snap.label}" if snap.label else snap.kind


def _restarts(w: WorkerSnapshot) -> str:
    if not w.restarts:
        return "0"
    causes = ", ".join(f"{n} {cause}" for cause, n in sorted(w.restart_causes.items()))
    text = f"{w.restarts} ({causes})" if causes else str(w.restarts)
    return f"{text}, last {w.last_exit}" if w.last_exit else text


def _pool_header(view: PoolView) -> Text:
    from rich.text import Text

    s = view.snap
    head = Text()
    head.append(s.kind, "bold")
    if s.label:
        head.append(f" {s.label}", "bold cyan")
    head.append(f"  pid {s.pid}  ")
    head.append(s.state, _POOL_STYLES.get(s.state, ""))
    head.append(f"  up {format_duration(s.uptime_s)}  {s.workers} worker{'s' if s.workers != 1 else ''}")
    if s.tracing:
        head.append("  tracing", "magenta")
    rate = "-" if view.tasks_per_s is None else f"{view.tasks_per_s:.1f}"
    head.append(f"\n  jobs {s.submitted} submitted, {s.completed} completed, ")
    head.append(f"{s.failed} failed", "red" if s.failed else "")
    head.append(f"   queue {s.pending} pending, {s.in_flight} in flight")
    head.append("   tasks ")
    head.append(f"{rate}/s", "bold")
    head.append(f" ({s.tasks_completed} done, {s.tasks_failed} raised)")
    limit = f"limit {format_bytes(s.arena_limit_bytes)}" if s.arena_limit_bytes else "no limit"
    head.append(f"\n  arena {format_bytes(s.arena_used_bytes)} used, {format_bytes(s.arena_peak_bytes)} peak, "
                f"{limit}")
    return head


def _worker_table(view: PoolView) -> RenderableType:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False)
    columns: list[tuple[str, JustifyMethod]] = [
        ("slot", "right"), ("pid", "right"), ("state", "left"), ("job", "right"), ("running", "right"),
        ("done", "right"), ("raised", "right"), ("busy", "right"), ("CPU", "right"), ("RSS", "right"),
        ("restarts", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name != "restarts")
    for w, rates in view.workers:
        running = w.state == "running" and w.job != 0
        table.add_row(
            Text(str(w.slot)),
            Text(str(w.pid) if w.pid else "-"),
            Text(w.state, _WORKER_STYLES.get(w.state, "")),
            Text(f"#{w.job}" if running else "-"),
            Text(format_duration(w.running_for_s) if running and w.running_for_s is not None else "-"),
            Text(str(w.tasks_completed)),
            Text(str(w.tasks_failed), "red" if w.tasks_failed else ""),
            Text("-" if rates.busy_share is None else f"{rates.busy_share:.0%}"),
            Text("-" if rates.cpu_percent is None else f"{rates.cpu_percent:.0f}%"),
            Text(format_bytes(w.rss_bytes) if w.rss_bytes else "-"),
            Text(_restarts(w), "yellow" if w.restarts else ""),
        )
    return table


def render(sample: Sample, *, waiting: bool = False, hint: str = "") -> RenderableType:
    """The view of one sample: a title line (with `hint`, how to quit, say), then
    each pool's header and worker table; `waiting`: the view goes on when there are no pools."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    title = Text()
    title.append("shoal top", "bold")
    n = len(sample.pools)
    title.append(f"  {n} pool{'s' if n != 1 else ''}  {time.strftime('%H:%M:%S', time.localtime(sample.at))}")
    if hint:
        title.append(f"   {hint}", "dim")
    parts: list[RenderableType] = [title]
    if sample.note:
        parts += [Text(""), Text(sample.note + ("; waiting for pools to appear" if waiting else ""), "yellow")]
    for view in sample.pools:
        parts += [Text(""), _pool_header(view), Padding(_worker_table(view), (0, 0, 0, 2), expand=False)]
    if sample.ended:
        parts += [Text("")] + [Text(line, "dim") for line in sample.ended]
    return Group(*parts)


# --- the two ways to run --------------------------------------------------------------------------------------


def _plain_console(file: TextIO) -> Console:
    """A console that writes text only: no colour, no cursor movement, as wide as
    the terminal (or $COLUMNS, else 160 when not a terminal, so rows do not wrap)."""
    from rich.console import Console

    if file.isatty():
        width = shutil.get_terminal_size((160, 24)).columns
    else:
        try:
            width = int(os.environ.get("COLUMNS", "160"))
        except ValueError:
            width = 160
    return Console(file=file, color_system=None, force_terminal=False, no_color=True, highlight=False,
                   emoji=False, width=max(40, width), soft_wrap=False)


def _run_once(pid: Optional[int], interval: float) -> int:
    sampler = Sampler(pid)
    first = sampler.sample()
    if first.pools:  # a second sample an interval later gives the rates
        time.sleep(interval)
        sample = sampler.sample()
    else:
        sample = first
    if not sample.pools:
        if pid is not None:
            print(f"shoal top: {sample.note}", file=sys.stderr)
            return 1
        print(f"shoal top: {sample.note}")
        return 0
    try:
        _plain_console(sys.stdout).print(render(sample))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run_live(pid: Optional[int], interval: float) -> int:
    from rich.console import Console
    from rich.live import Live

    sampler = Sampler(pid)
    console = Console()
    if not console.is_terminal:
        return _run_batch(sampler, interval)
    # `kill`: leave as after q, with the terminal restored (the with-blocks' exits run).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with _Keys() as keys:
        hint = "q or Ctrl-C to quit" if keys.reading else "Ctrl-C to quit"
        with Live(render(sampler.sample(), waiting=True, hint=hint), console=console, screen=True,
                  auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as view:
            while not keys.wait_for_quit(interval):
                view.update(render(sampler.sample(), waiting=True, hint=hint), refresh=True)
    return 0


def _run_batch(sampler: Sampler, interval: float) -> int:
    """Output to a file or a pipe: a plain-text view every interval, one after
    the other (like ``top -b``), until Ctrl-C or the reader goes away."""
    console = _plain_console(sys.stdout)
    try:
        while True:
            console.print(render(sampler.sample(), waiting=True))
            console.print()
            sys.stdout.flush()
            time.sleep(interval)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


class _Keys:
    """Reads ``q`` from the terminal between refreshes, in cbreak mode (keys
    arrive one by one, unechoed; Ctrl-C still interrupts). Without a terminal
    on stdin (a pipe, /dev/null, none) it only waits: quit with Ctrl-C then."""

    def __init__(self) -> None:
        self._fd: Optional[int] = None  # where keys are read; None: none (or no more)
        self._saved: Optional[tuple[int, list[Any]]] = None  # the terminal's settings to restore at exit

    def __enter__(self) -> _Keys:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no stdin, or not a real file
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        try:
            self._saved = (fd, termios.tcgetattr(fd))
            tty.setcbreak(fd)
            self._fd = fd
        except (termios.error, OSError):
            self._fd = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self._saved[0], termios.TCSADRAIN, self._saved[1])
            except (OSError, termios.error):
                pass

    @property
    def reading(self) -> bool:
        """Whether q is read (stdin is a terminal)."""
        return self._fd is not None

    def wait_for_quit(self, timeout: float) -> bool:
        """Waits `timeout` seconds; True as soon as q (or Q) is pressed."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._fd is None:
                time.sleep(left)
                return False
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                return False
            try:
                data = os.read(self._fd, 64)
            except OSError:
                data = b""
            if not data:  # the terminal went away: keep showing, stop reading
                self._fd = None
                continue
            if b"q" in data.lower():
                return True
