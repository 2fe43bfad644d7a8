"""``shoal.Executor``: a drop-in ``concurrent.futures.ProcessPoolExecutor``."""
from __future__ import annotations

import inspect
import os
import time
from concurrent import futures
from typing import TYPE_CHECKING, Any, Callable, Generator, Generic, Iterable, Iterator, Optional, TypeVar, Union

from .observed import ObservedPool
from ..runtime.core import PoolCore
from ..runtime.options import CpuAffinity, PoolOptions, check_chunksize, check_timeout
from ..runtime.progress import progress_bar
from .future import Future

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from types import TracebackType

    from tqdm import tqdm
    from typing_extensions import ParamSpec

    from ..runtime.interface import PoolRuntime
    from ..runtime.map_feed import MapFeed

    _P = ParamSpec("_P")

_T = TypeVar("_T")

__all__ = ["Executor", "TaskOptions"]


class Executor(futures.Executor, ObservedPool):
    """A process pool with the ``concurrent.futures`` API, on shoal's engine.

    Differences from ProcessPoolExecutor that only add: ``map`` reads its input
    lazily (a generator of any length runs in bounded memory) and picks its
    chunk size from the measured task time; ``progress=True`` shows a bar;
    ``retries=N`` re-runs a task whose worker died.

    Args:
        max_workers: worker processes; default: the CPUs this process may use.
        mp_context: a multiprocessing context: its start method is used.
        initializer: called as ``initializer(*initargs)`` once in each worker.
        max_tasks_per_child: replace a worker after this many tasks.
        max_memory_per_worker: resident memory limit per worker (bytes or a
            string like ``"2GB"``): a task that drives its worker past it is
            killed and raises ``shoal.MemoryLimitError``; a worker above 80 %
            of it after a task is replaced before its next one.
        shm_limit: the most shared memory (bytes or ``"4GB"``) the pool's arena
            may hold for big arguments and results in flight; default: half
            of the available memory (of /dev/shm's free space where the arena
            lives there). Maps wait for room or send buffers in-band; a single
            submit that does not fit raises MemoryError.
        start_method: ``"forkserver"`` (default: workers forked from a helper
            that holds none of the caller's file descriptors, so a replacement
            costs milliseconds), ``"fork"`` (the same, but workers inherit the
            caller's file descriptors, as multiprocessing's fork children do),
            ``"spawn"`` (a fresh interpreter per worker), or ``"inline"``
            (debug mode: every task runs in the caller, as does the
            environment variable ``SHOAL_SERIAL=1``).
        inner_max_num_threads: the threads each worker's BLAS and OpenMP
            libraries may start (as joblib's); default: the worker's cores (the
            CPUs this process may use divided by the workers, or its
            ``cpu_affinity`` set), so N workers never run N x cores threads.
            If the user set a variable such as ``OMP_NUM_THREADS``, the threads
            are left to it unless this is given. A pool started inside a task
            defaults to that worker's cores too.
        cpu_affinity: pin workers to CPUs, as mpire's ``cpu_ids``: one entry
            for all workers or one per worker, each a CPU number or a list of
            them (``[[0, 1], [2, 3]]``); or ``"spread"``: one CPU per worker.
        trace: write a timeline of the pool's tasks to this file (Chrome
            trace JSON, for Perfetto) when the pool shuts down; see also
            ``shoal.trace()``.
        metrics_port: serve Prometheus ``/metrics`` of this process's pools
            on 127.0.0.1 at this port (0: a free one) while the pool runs.
        dashboard: serve the live web dashboard of this process's pools on
            127.0.0.1 (a free port; its URL, with its access token, is logged
            on the "shoal" logger and in ``ex.dashboard_url``).
    """

    def __init__(
        self,
        max_workers: Optional[int] = None,
        mp_context: Optional[BaseContext] = None,
        initializer: Optional[Callable[..., object]] = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: Optional[int] = None,
        max_memory_per_worker: Union[int, str, None] = None,
        shm_limit: Union[int, str, None] = None,
        start_method: str = "forkserver",
        inner_max_num_threads: Optional[int] = None,
        cpu_affinity: CpuAffinity = None,
        trace: Union[str, "os.PathLike[str]", None] = None,
        metrics_port: Optional[int] = None,
        dashboard: bool = False,
    ) -> None:
        self._core = PoolCore(
            PoolOptions.for_executor(max_workers, mp_context, initializer, initargs, max_tasks_per_child,
                                     max_memory_per_worker, shm_limit, start_method,
                                     inner_max_num_threads, cpu_affinity).monitored(trace, metrics_port, dashboard)
        )

    @property
    def _runtime(self) -> PoolRuntime:
        return self._core.runtime

    @property
    def workers(self) -> int:
        """How many worker processes the pool runs."""
        return self._core.workers

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; returns a Future for its result.

        Every keyword goes to ``fn``, as with ProcessPoolExecutor. Retries and a
        time limit for the task: ``ex.with_options(retries=3, task_timeout=5).submit(...)``.
        """
        core = self._core  # _submit's body, inlined: a call less on the hottest path
        with core.lock:
            core.check_open(_after_shutdown)
            fut: Future[_T] = Future(core.runtime)
            fut._job_id = core.submit_call(fn, args, kwargs, fut)  # Future() holds the runtime already
            return fut

    def with_options(self, *, retries: int = 0, task_timeout: Optional[float] = None) -> "TaskOptions":
        """This pool with per-task settings for the tasks submitted through it:
        ``retries`` re-runs a task up to this many times if its worker dies under
        it (else it fails with ``shoal.WorkerLostError``); ``task_timeout``:
        seconds the task may run, past which its worker is stopped and replaced
        and the future raises ``TimeoutError``.

            safe = ex.with_options(retries=3, task_timeout=60)
            fut = safe.submit(fn, x, timeout=5)   # fn gets timeout=5
        """
        check_timeout(task_timeout)
        return TaskOptions(self, retries, task_timeout)

    def _submit(self, fn: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any], retries: int,
                task_timeout: Optional[float]) -> Future[_T]:
        core = self._core
        with core.lock:
            core.check_open(_after_shutdown)
            fut: Future[_T] = Future(core.runtime)
            fut._job_id = core.submit_call(fn, args, kwargs, fut, retries, task_timeout)
            return fut

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: Optional[int] = None,
        progress: bool = False,
        retries: int = 0,
        task_timeout: Optional[float] = None,
    ) -> Iterator[_T]:
        """Like ``builtins.map(fn, *iterables)``, run in the workers, results in order.

        The input is read lazily with bounded read-ahead. ``timeout`` (seconds,
        from this call) bounds the wait for each result: TimeoutError after it.
        An exception raised by ``fn`` is raised when its result is reached.
        ``chunksize=None`` sizes chunks from the measured task time.
        ``task_timeout`` limits each task's run time (``timeout`` keeps its
        stdlib meaning); ``retries`` re-runs tasks whose worker died.
        """
        check_chunksize(chunksize, "chunksize must be >= 1.")
        check_timeout(task_timeout)
        with self._core.lock:
            self._core.check_open(_after_shutdown)
        if chunksize is None and self._core.options.max_tasks_per_child:
            chunksize = 1  # a worker is replaced after so many tasks: items, as the stdlib counts them
        deadline = None if timeout is None else time.monotonic() + timeout
        total = _common_length(iterables)
        feed = self._core.map(
            fn, zip(*iterables), star=True, chunksize=chunksize, total=total, retries=retries, timeout=task_timeout
        )
        results: _MapIterator[_T] = _MapIterator(feed, deadline, progress_bar(progress, total))
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with wait, return once running tasks are done and workers have exited."""
        self._core.shutdown(wait, cancel_futures)

    def __del__(self) -> None:
        # As ProcessPoolExecutor: a pool nobody holds stops once its tasks are done.
        try:
            if not self._core.closed:
                self.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - interpreter teardown, a forked copy
            pass

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: drop what is queued and stop the workers now, not after their tasks.
            self._core.terminate()
        else:
            self.shutdown(wait=True)


class TaskOptions:
    """An Executor with per-task settings (``Executor.with_options``): its
    ``submit`` and ``map`` are the pool's, with these retries and time limit."""

    __slots__ = ("_executor", "retries", "task_timeout")

    def __init__(self, executor: Executor, retries: int, task_timeout: Optional[float]) -> None:
        self._executor, self.retries, self.task_timeout = executor, retries, task_timeout

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """``Executor.submit`` with these settings; every keyword goes to ``fn``."""
        return self._executor._submit(fn, args, kwargs, self.retries, self.task_timeout)

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: Optional[int] = None, progress: bool = False) -> Iterator[_T]:
        """``Executor.map`` with these settings."""
        return self._executor.map(fn, *iterables, timeout=timeout, chunksize=chunksize, progress=progress,
                                  retries=self.retries, task_timeout=self.task_timeout)

    def __repr__(self) -> str:
        return f"<{self._executor!r} with retries={self.retries}, task_timeout={self.task_timeout}>"


def _after_shutdown() -> RuntimeError:
    return RuntimeError("cannot schedule new futures after shutdown")


def _common_length(iterables: tuple[Any, ...]) -> Optional[int]:  # any iterables: those with a len()
    try:
        return min(len(it) for it in iterables) if iterables else 0
    except TypeError:
        return None


class _MapIterator(Generic[_T]):
    """``Executor.map``'s results. As the stdlib's: an iterator that is never
    started still has every item run (its results are dropped once it is
    gone); one closed or dropped part way cancels the items not yet running."""

    def __init__(self, feed: MapFeed, deadline: Optional[float], bar: Optional[tqdm[Any]]) -> None:
        self._feed = feed
        self._deadline, self._bar = deadline, bar
        self._results: Generator[_T, None, None] = self._generate()

    def __iter__(self) -> Iterator[_T]:
        # The generator itself: `for`, list() and sum() then run at C speed,
        # without a call of ours per result.
        return self._results

    def __next__(self) -> _T:
        return next(self._results)

    def _generate(self) -> Generator[_T, None, None]:
        feed, bar = self._feed, self._bar
        try:
            for values, failures, count in feed.chunks(self._deadline):
                end = min(failures) if failures else len(values)
                del values[end:]
                values.reverse()
                pop = values.pop
                while values:
                    yield pop()  # held by nobody here once yielded, as the stdlib's map
                if failures:
                    raise failures[end]
                if bar is not None:
                    bar.update(count)
        finally:
            feed.close()
            if bar is not None:
                bar.close()

    def close(self) -> None:
        if inspect.getgeneratorstate(self._results) == inspect.GEN_CREATED:
            self._feed.close()  # its finally would not run: the generator never started
        self._results.close()

    def __del__(self) -> None:
        if inspect.getgeneratorstate(self._results) == inspect.GEN_CREATED:
            self._feed.abandon()
