"""A pool's options, parsed and checked once (PoolOptions), and the argument
checks both pool surfaces share, with the stdlib's errors."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, Union

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext


# The cores the worker this process is owns (its share of the machine, or its
# cpu_affinity= set); None outside workers. Set by worker.cores.
_worker_cores: Optional[int] = None


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1; in a
    worker, the cores that worker owns, so a pool started inside a task does
    not oversubscribe the machine."""
    if _worker_cores is not None:
        return _worker_cores
    return available_cpus_count()


def available_cpus_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_inner_threads(inner_max_num_threads: object) -> Optional[int]:
    """``inner_max_num_threads=``: None (cores / workers) or an int of at least 1."""
    if inner_max_num_threads is None:
        return None
    if isinstance(inner_max_num_threads, bool) or not isinstance(inner_max_num_threads, int):
        raise TypeError(f"inner_max_num_threads must be an integer, not {inner_max_num_threads!r}")
    if inner_max_num_threads < 1:
        raise ValueError(f"inner_max_num_threads must be at least 1, not {inner_max_num_threads}")
    return inner_max_num_threads


CpuSets = tuple[tuple[int, ...], ...]
#: What ``cpu_affinity=`` takes: "spread", or CPUs (or CPU lists) per worker or for all.
CpuAffinity = Union[str, Sequence[Union[int, Sequence[int]]], None]


def check_cpu_affinity(cpu_affinity: object, workers: int) -> Optional[CpuSets]:
    """``cpu_affinity=``: the CPUs of each worker, as mpire's ``cpu_ids``: one
    entry for all workers or one per worker, each a CPU number or a list of
    them; or ``"spread"``: one CPU per worker, round robin over the CPUs this
    process may use. Every CPU must be one this process may run on."""
    if cpu_affinity is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if cpu_affinity == "spread":
        return tuple((allowed[i % len(allowed)],) for i in range(workers))
    if isinstance(cpu_affinity, (str, bytes)) or not isinstance(cpu_affinity, Iterable):
        raise TypeError(f"cpu_affinity must be 'spread' or a list of CPUs or CPU lists, not {cpu_affinity!r}")
    sets: list[tuple[int, ...]] = []
    for entry in cpu_affinity:
        cpus = (entry,) if isinstance(entry, int) else tuple(entry) if isinstance(entry, Iterable) else None
        if cpus is None or not cpus or any(isinstance(c, bool) or not isinstance(c, int) for c in cpus):
            raise TypeError(f"each entry of cpu_affinity must be a CPU number or a non-empty list of them, not {entry!r}")
        missing = sorted(set(cpus) - set(allowed))
        if missing:
            raise ValueError(f"cpu_affinity names CPUs {missing} that this process may not run on (it may use {allowed})")
        sets.append(tuple(sorted(set(cpus))))
    if len(sets) not in (1, workers):
        raise ValueError(f"cpu_affinity needs one entry for every worker ({workers}) or one for all, not {len(sets)}")
    return tuple(sets)


def parse_bytes(amount: Union[int, str, None]) -> int:
    """Bytes from an int or a string such as "512MB", "2 GiB"; 0 for None."""
    if amount is None:
        return 0
    if isinstance(amount, int):
        if amount < 0:
            raise ValueError("a memory limit cannot be negative")
        return amount
    text = amount.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(f"cannot read {amount!r} as a size in bytes (try 512_000_000 or '512MB')") from None


def check_timeout(timeout: Optional[float]) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"a task's timeout must be a number of seconds, not {timeout!r}")
    if timeout <= 0:
        raise ValueError(f"a task's timeout must be positive, not {timeout!r}")
    return float(timeout)


START_METHODS = ("forkserver", "fork", "spawn", "inline")


def check_start_method(start_method: str, context: Optional[BaseContext]) -> str:
    """The start method from ``start_method`` or a multiprocessing context
    (``mp_context=``/``context=`` as the stdlib pools take)."""
    if context is not None:
        get = getattr(context, "get_start_method", None)
        if get is None:
            raise TypeError(f"expected a multiprocessing context, not {context!r}")
        start_method = get()
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(map(repr, START_METHODS))}, not {start_method!r}")
    return start_method


def check_chunksize(chunksize: object, message: str) -> None:
    """``None`` (sized from the measured task time) or an int of at least 1."""
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an integer, not {chunksize!r}")
    if chunksize < 1:
        raise ValueError(message)




@dataclass(frozen=True)
class PoolOptions:
    """A pool's settings, checked once, whichever surface made the pool.

    ``for_executor`` and ``for_pool`` take each stdlib pool's own argument
    names and raise its own errors for bad values (the two stdlib pools word
    and type them differently); the core, the engine front and the serial
    mode read only this object.
    """

    workers: int
    initializer: Optional[Callable[..., Any]] = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int = 0  # 0: workers are never replaced for their task count
    start_method: str = "forkserver"
    max_memory_per_worker: int = 0  # bytes; 0: no limit
    shm_limit: int = 0  # bytes; 0: the arena's default
    cancel_at_exit: bool = False  # at interpreter exit: terminate (Pool) rather than finish the work (Executor)
    inner_max_num_threads: Optional[int] = None  # threads of BLAS/OpenMP per worker; None: its cores
    cpu_affinity: Optional[CpuSets] = None  # per worker (or one for all); None: not pinned
    surface: str = "Executor"  # which pool API made it ("Executor", "Pool"): what `shoal top` shows
    # Seeing inside (shoal.obs): a Chrome trace written at the end, /metrics
    # served on this port (0: a free one), the live web page.
    trace: Optional[str] = None
    metrics_port: Optional[int] = None
    dashboard: bool = False

    def monitored(
        self, trace: Union[str, "os.PathLike[str]", None], metrics_port: Optional[int], dashboard: bool
    ) -> "PoolOptions":
        """These options with the monitoring ones, checked."""
        if trace is not None and not isinstance(trace, (str, os.PathLike)):
            raise TypeError(f"trace must be a file path, not {type(trace).__name__}")
        if metrics_port is not None and (
            isinstance(metrics_port, bool) or not isinstance(metrics_port, int) or not 0 <= metrics_port <= 65535
        ):
            raise ValueError(f"metrics_port must be a port number (0 for a free one), not {metrics_port!r}")
        if not isinstance(dashboard, bool):
            raise TypeError("dashboard must be True or False")
        if trace is None and metrics_port is None and not dashboard:
            return self
        return dataclasses.replace(
            self, trace=None if trace is None else os.fspath(trace), metrics_port=metrics_port, dashboard=dashboard
        )

    @property
    def inline(self) -> bool:
        """The serial debug mode: tasks run in the caller."""
        return self.start_method == "inline" or os.environ.get("SHOAL_SERIAL", "") not in ("", "0")

    @classmethod
    def for_executor(
        cls,
        max_workers: Optional[int],
        mp_context: Optional[BaseContext],
        initializer: Optional[Callable[..., Any]],
        initargs: Iterable[Any],
        max_tasks_per_child: Optional[int],
        max_memory_per_worker: Union[int, str, None],
        shm_limit: Union[int, str, None],
        start_method: str,
        inner_max_num_threads: Optional[int] = None,
        cpu_affinity: CpuAffinity = None,
    ) -> "PoolOptions":
        """ProcessPoolExecutor's checks and messages."""
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        return cls._make(max_workers, initializer, initargs, max_tasks_per_child, mp_context, start_method,
                         max_memory_per_worker, shm_limit, False, inner_max_num_threads, cpu_affinity)

    @classmethod
    def for_pool(
        cls,
        processes: Optional[int],
        initializer: Optional[Callable[..., Any]],
        initargs: Iterable[Any],
        maxtasksperchild: Optional[int],
        context: Optional[BaseContext],
        max_memory_per_worker: Union[int, str, None],
        shm_limit: Union[int, str, None],
        start_method: str,
        inner_max_num_threads: Optional[int] = None,
        cpu_affinity: CpuAffinity = None,
    ) -> "PoolOptions":
        """multiprocessing.Pool's checks and messages."""
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if isinstance(maxtasksperchild, bool) or not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        return cls._make(processes, initializer, initargs, maxtasksperchild, context, start_method,
                         max_memory_per_worker, shm_limit, True, inner_max_num_threads, cpu_affinity, surface="Pool")

    @classmethod
    def _make(cls, workers: Optional[int], initializer: Optional[Callable[..., Any]], initargs: Iterable[Any],
              max_tasks_per_child: Optional[int], context: Optional[BaseContext], start_method: str,
              max_memory_per_worker: Union[int, str, None], shm_limit: Union[int, str, None],
              cancel_at_exit: bool, inner_max_num_threads: Optional[int] = None,
              cpu_affinity: CpuAffinity = None, surface: str = "Executor") -> "PoolOptions":
        workers = default_workers() if workers is None else workers
        return cls(
            workers=workers,
            initializer=initializer,
            initargs=tuple(initargs),
            max_tasks_per_child=max_tasks_per_child or 0,
            start_method=check_start_method(start_method, context),
            max_memory_per_worker=parse_bytes(max_memory_per_worker),
            shm_limit=parse_bytes(shm_limit),
            cancel_at_exit=cancel_at_exit,
            inner_max_num_threads=check_inner_threads(inner_max_num_threads),
            cpu_affinity=check_cpu_affinity(cpu_affinity, workers),
            surface=surface,
        )
