"""``shoal.Pool``: a drop-in ``multiprocessing.Pool`` on shoal's engine."""
from __future__ import annotations

import os
import threading
import time
from multiprocessing import TimeoutError as MpTimeoutError
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar, Union

from multiprocessing.pool import MaybeEncodingError  # type: ignore[attr-defined]  # missing from typeshed

from .observed import ObservedPool
from ..runtime.outcome import Payload, decode
from ..runtime.core import PoolCore
from ..runtime.handle import JobHandle
from ..runtime.options import CpuAffinity, PoolOptions, check_chunksize, check_timeout
from ..runtime.progress import progress_bar

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from tqdm import tqdm

    from ..runtime.interface import PoolRuntime
    from ..runtime.map_feed import Chunk, MapFeed

__all__ = ["Pool", "AsyncResult", "MapResult", "IMapIterator"]

_S = TypeVar("_S")
_T = TypeVar("_T")



def _not_running() -> ValueError:
    return ValueError("Pool not running")


class _Repr:
    def __init__(self, text: str) -> None:
        self._text = text

    def __repr__(self) -> str:
        return self._text


def _pool_error(exc: BaseException) -> BaseException:
    """A result the worker could not pickle is multiprocessing's MaybeEncodingError."""
    text = getattr(exc, "shoal_unpicklable_result", None)
    if text is None:
        return exc
    error: BaseException = MaybeEncodingError(exc, _Repr(text))
    error.__cause__ = exc
    return error


def _pool_decode(status: int, payload: Payload) -> tuple[bool, Any]:
    ok, value = decode(status, payload)
    return (True, value) if ok else (False, _pool_error(value))


class AsyncResult(JobHandle, Generic[_T]):
    """The result of ``apply_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(
        self,
        callback: Optional[Callable[[_T], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
    ) -> None:
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

    def _set(self, success: bool, value: Any) -> None:
        self._success, self._value = success, value
        try:
            if success and self._callback is not None:
                self._callback(value)
            elif not success and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: Optional[float] = None) -> None:
        if not self._event.is_set():
            # Take the result straight from the workers in this thread (no
            # hop through the pool's result thread); callbacks then run here.
            timeout = self._take_result(timeout)
        self._event.wait(timeout)

    def get(self, timeout: Optional[float] = None) -> _T:
        """The result; re-raises the task's exception; multiprocessing.TimeoutError after `timeout`."""
        self.wait(timeout)
        if not self.ready():
            raise MpTimeoutError
        if self._success:
            value: _T = self._value
            return value
        raise self._value


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[_T]]):
    """The result of ``map_async``/``starmap_async``: a list in input order."""

    def __init__(
        self,
        feed_factory: Callable[[Optional[Callable[[int], object]], Callable[[MapFeed], None]], MapFeed],
        callback: Optional[Callable[[list[_T]], object]],
        error_callback: Optional[Callable[[BaseException], object]],
        bar: Optional[tqdm[Any]],
    ) -> None:
        super().__init__(callback, error_callback)
        self._bar = bar
        feed_factory(bar.update if bar is not None else None, self._finish)

    def _finish(self, feed: MapFeed) -> None:
        if self._bar is not None:
            self._bar.close()
        try:
            results, failures = feed.gathered()
        except BaseException as exc:  # the input iterable itself failed
            self._set(False, exc)
            return
        if failures:
            self._set(False, _pool_error(failures[min(failures)]))  # the first failing item, as mp.Pool
        else:
            self._set(True, results)


class IMapIterator(Generic[_T]):
    """Iterator over ``imap``/``imap_unordered`` results; ``next(timeout)`` as in multiprocessing.

    A task's exception is raised when its item is reached; iteration can go on after it.
    """

    def __init__(self, feed: MapFeed, bar: Optional[tqdm[Any]]) -> None:
        self._feed = feed
        self._bar = bar
        self._chunks: Iterator[Chunk] = feed.chunks()
        self._buffer: list[Any] = []
        self._failures: dict[int, BaseException] = {}
        self._pos = 0

    def __iter__(self) -> IMapIterator[_T]:
        return self

    def next(self, timeout: Optional[float] = None) -> _T:
        while self._pos >= len(self._buffer):
            values, failures, count = self._next_chunk(timeout)
            self._buffer, self._failures, self._pos = values, failures, 0
            if self._bar is not None:
                self._bar.update(count)
        pos = self._pos
        self._pos += 1
        if pos in self._failures:
            raise _pool_error(self._failures[pos])
        value: _T = self._buffer[pos]
        self._buffer[pos] = None  # held by nobody here once handed out
        return value

    __next__ = next

    def __del__(self) -> None:
        # As multiprocessing: every item runs, whether or not its result is read.
        self._feed.abandon()

    def _next_chunk(self, timeout: Optional[float]) -> Chunk:
        if timeout is not None:
            self._chunks = self._feed.chunks(time.monotonic() + timeout) if self._chunks is None else self._chunks
        try:
            return next(self._chunks)
        except TimeoutError:
            self._chunks = self._feed.chunks()
            raise MpTimeoutError from None
        except StopIteration:
            if self._bar is not None:
                self._bar.close()
            raise


class Pool(ObservedPool):
    """A process pool with the ``multiprocessing.Pool`` API, on shoal's engine.

    ``chunksize=None`` (the default everywhere) sizes chunks from the measured
    task time; ``progress=True`` on the map methods shows a tqdm bar. As in
    multiprocessing, leaving a ``with Pool() as p:`` block calls terminate().

    Beyond multiprocessing: ``retries=N`` re-runs a task whose worker died;
    ``task_timeout=`` (seconds, on apply_async and the map methods) limits each
    task's run time; ``max_memory_per_worker`` limits resident memory (see
    ``shoal.Executor``); ``start_method`` as for ``shoal.Executor`` (``context=``
    takes a multiprocessing context's); ``start_method="inline"`` or
    ``SHOAL_SERIAL=1`` runs tasks inline; ``inner_max_num_threads`` and
    ``cpu_affinity`` as for ``shoal.Executor`` (BLAS/OpenMP threads per
    worker, default its share of the cores; CPU pinning); ``trace``,
    ``metrics_port`` and ``dashboard`` as for ``shoal.Executor`` (a timeline
    file, Prometheus /metrics, the live web page).
    """

    def __init__(
        self,
        processes: Optional[int] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: Optional[int] = None,
        context: Optional[BaseContext] = None,
        *,
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
            PoolOptions.for_pool(processes, initializer, initargs, maxtasksperchild, context,
                                 max_memory_per_worker, shm_limit, start_method,
                                 inner_max_num_threads, cpu_affinity).monitored(trace, metrics_port, dashboard)
        )

    @property
    def _runtime(self) -> PoolRuntime:
        return self._core.runtime

    @property
    def _processes(self) -> int:
        return self._core.workers

    def _check_running(self) -> None:
        self._core.check_open(_not_running)

    # -- single calls ---------------------------------------------------------

    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (), kwds: Optional[Mapping[str, Any]] = None) -> _T:
        """``func(*args, **kwds)`` in a worker; blocks for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Optional[Mapping[str, Any]] = None,
        callback: Optional[Callable[[_T], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        retries: int = 0,
        task_timeout: Optional[float] = None,
    ) -> AsyncResult[_T]:
        """Schedule ``func(*args, **kwds)``. Callbacks run in the thread that
        receives the result: the pool's result thread, or a thread blocked in
        ``get()``/``wait()`` on this result."""
        core = self._core
        result: AsyncResult[_T] = AsyncResult(callback, error_callback)
        with core.lock:
            core.check_open(_not_running)
            job_id = core.submit_call(
                func, tuple(args), dict(kwds or {}), lambda s, ns, p: result._set(*_pool_decode(s, p)), retries, task_timeout
            )
            result._bind(core.runtime, job_id)
        return result

    # -- maps -----------------------------------------------------------------

    def _map_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Any],
        chunksize: Optional[int],
        callback: Optional[Callable[[list[_T]], object]],
        error_callback: Optional[Callable[[BaseException], object]],
        star: bool,
        progress: bool,
        retries: int,
        task_timeout: Optional[float],
    ) -> MapResult[_T]:
        self._check_running()
        check_chunksize(chunksize, f"Chunksize must be 1+, not {chunksize!r}")
        check_timeout(task_timeout)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        total = len(iterable)  # type: ignore[arg-type]  # a list or has __len__: mypy's hasattr() gives no Sized
        bar = progress_bar(progress, total)

        def start(on_chunk: Optional[Callable[[int], object]], on_complete: Callable[[MapFeed], None]) -> MapFeed:
            return self._core.map(
                func, iterable, star=star, chunksize=chunksize, total=total, bounded=False,
                on_chunk=on_chunk, on_complete=on_complete, retries=retries, timeout=task_timeout, gather=True,
            )

        return MapResult(start, callback, error_callback, bar)

    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: Optional[int] = None,
            *, progress: bool = False, retries: int = 0, task_timeout: Optional[float] = None) -> list[_T]:
        """``list(map(func, iterable))``, run in the workers."""
        return self._map_async(func, iterable, chunksize, None, None, False, progress, retries, task_timeout).get()

    def map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[list[_T]], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        progress: bool = False,
        retries: int = 0,
        task_timeout: Optional[float] = None,
    ) -> MapResult[_T]:
        return self._map_async(func, iterable, chunksize, callback, error_callback, False, progress, retries, task_timeout)

    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]], chunksize: Optional[int] = None,
                *, progress: bool = False, retries: int = 0, task_timeout: Optional[float] = None) -> list[_T]:
        """Like map, calling ``func(*args)`` for each args tuple."""
        return self._map_async(func, iterable, chunksize, None, None, True, progress, retries, task_timeout).get()

    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: Optional[int] = None,
        callback: Optional[Callable[[list[_T]], object]] = None,
        error_callback: Optional[Callable[[BaseException], object]] = None,
        *,
        progress: bool = False,
        retries: int = 0,
        task_timeout: Optional[float] = None,
    ) -> MapResult[_T]:
        return self._map_async(func, iterable, chunksize, callback, error_callback, True, progress, retries, task_timeout)

    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: Optional[int] = None,
             *, progress: bool = False, retries: int = 0, task_timeout: Optional[float] = None) -> IMapIterator[_T]:
        """Lazy, ordered map: reads the input as results are consumed."""
        return self._imap(func, iterable, chunksize, True, progress, retries, task_timeout)

    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: Optional[int] = None,
                       *, progress: bool = False, retries: int = 0, task_timeout: Optional[float] = None
                       ) -> IMapIterator[_T]:
        """Like imap, yielding results as they finish."""
        return self._imap(func, iterable, chunksize, False, progress, retries, task_timeout)

    def _imap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Any],
        chunksize: Optional[int],
        ordered: bool,
        progress: bool,
        retries: int,
        task_timeout: Optional[float],
    ) -> IMapIterator[_T]:
        self._check_running()
        check_chunksize(chunksize, f"Chunksize must be 1+, not {chunksize!r}")
        check_timeout(task_timeout)
        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]  # (as in _map_async)
        feed = self._core.map(
            func, iterable, star=False, chunksize=chunksize, ordered=ordered, total=total, retries=retries, timeout=task_timeout
        )
        results: IMapIterator[_T] = IMapIterator(feed, progress_bar(progress, total))
        return results

    # -- life cycle -----------------------------------------------------------

    def close(self) -> None:
        """No more tasks; workers exit once the submitted ones are done."""
        self._core.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks are cancelled."""
        self._core.terminate()

    def join(self) -> None:
        """Wait for the workers to exit; call close() or terminate() first."""
        if not self._core.closed:
            raise ValueError("Pool is still running")
        self._core.join()

    def __del__(self) -> None:
        # As multiprocessing.Pool: a warning for a pool left running, then it is stopped.
        core = getattr(self, "_core", None)
        if core is not None and not core.closed:
            import warnings

            warnings.warn(f"unclosed running shoal pool {self!r}", ResourceWarning, source=self)
            try:
                self.terminate()
            except Exception:  # noqa: BLE001 - interpreter teardown, a forked copy
                pass

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
