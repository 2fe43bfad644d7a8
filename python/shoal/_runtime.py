"""The engine's Python face, shared by Executor and Pool.

A Runtime owns one C++ engine (and so the workers), a table of callables
already sent to workers, and one thread that takes finished jobs from the
engine in batches (waiting with the GIL released) and hands each to the
handler registered for it.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from functools import partial
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from . import _core
from ._bootstrap import child_argv, fork_fork_server, importing_main, run_inherited_initializer
from ._oob import MAGIC as _PACKED
from ._oob import pack, pack_call, release, unpack
from ._serialize import as_pickling_error, by_reference, dumps, dumps_callable, loads_exception, transfer_error
from ._worker import CALL, MAP_ONE, MAP_STAR
from .errors import BrokenPoolError, MemoryLimitError, WorkerLostError

# Job statuses, defined in cpp/include/shoal/sched/protocol.hpp.
_status = _core.protocol
OK, ERROR, WORKER_LOST, CANCELLED = _status.OK, _status.ERROR, _status.WORKER_LOST, _status.CANCELLED
BROKEN, TIMED_OUT, MEMORY_EXCEEDED, LOG = _status.BROKEN, _status.TIMED_OUT, _status.MEMORY_EXCEEDED, _status.LOG
# Outcomes of tasks run inline by the serial runtime: the payload is the object itself.
INLINE_OK, INLINE_ERROR = 100, 101

log = logging.getLogger("shoal")
log.addHandler(logging.NullHandler())  # a library logs; the application decides where it goes

Handler = Callable[[int, int, bytes], None]

_FUNCTION_CACHE = 256
# A worker whose resident memory passes this share of max_memory_per_worker
# after a task is replaced before it takes the next one.
MEMORY_SOFT_FRACTION = 0.8
_RING_BYTES = 1 << 20


_live: "weakref.WeakSet[Runtime]" = weakref.WeakSet()
_init_tokens = itertools.count(1)
_exiting = False  # the interpreter is shutting down: no new tasks

_IMPORTING_MAIN = """
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase.

        This probably means that you are not using fork to start your
        child processes and you have forgotten to use the proper idiom
        in the main module:

            if __name__ == '__main__':
                freeze_support()
                ...

        The "freeze_support()" line can be omitted if the program
        is not going to be frozen to produce an executable."""


def interpreter_exiting() -> bool:
    """Whether interpreter shutdown has begun (submit then raises RuntimeError, as the stdlib's)."""
    return _exiting


@atexit.register
def _stop_live_runtimes() -> None:
    # Before the interpreter tears down its threads: a result thread blocked in
    # the engine must return by itself, not be frozen mid-call.
    global _exiting
    _exiting = True
    for runtime in list(_live):
        runtime.at_exit()


class _ForkedCopy:
    """What a pool's engine is in a child forked from the pool's process: the
    rings, arena and workers are the parent's, so every use is refused."""

    def __init__(self, owner: int) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this pool belongs to process {self._owner}; a process forked from it cannot use it "
            "(it would take the parent's results): create a new pool in the child"
        )


def _orphan_runtimes_in_child() -> None:
    """After fork(), in the child: every pool of the parent goes inert."""
    import ctypes

    for runtime in list(_live):
        engine = runtime._engine
        # Never destroyed here: its destructor would stop the parent's workers
        # and join threads this process does not have.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        _orphans.append(engine)
        runtime._engine = _ForkedCopy(os.getppid())
        runtime._handlers = {}
        runtime._feeds = set()
    _live.clear()


_orphans: list = []
os.register_at_fork(after_in_child=_orphan_runtimes_in_child)


def _clean_up_on_sigterm() -> None:
    """Where SIGTERM would kill this process without a word (its default),
    it first stops the pools and removes this process's shared-memory names,
    then dies of the same signal: what the exit path does where Python runs,
    for the signal that service managers and `docker stop` send."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _die_of_sigterm)


def _die_of_sigterm(signum: int, frame: Any) -> None:
    import signal
    import stat

    signal.signal(signum, signal.SIG_DFL)
    try:
        for runtime in list(_live):
            try:
                runtime._engine.terminate()  # the workers go first: nothing writes to the names after
            except Exception:  # noqa: BLE001 - dying anyway
                pass
        me, uid = os.getpid(), os.geteuid()
        for name in os.listdir("/dev/shm"):
            if not (name.startswith(f"shoal-{me}-") or name.startswith(f"shoal-lock-{me}-")):
                continue
            path = os.path.join("/dev/shm", name)
            try:
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and info.st_uid == uid:  # ours, never a planted link
                    os.unlink(path)
            except OSError:
                pass
    finally:
        os.kill(os.getpid(), signum)


class Cancelled(Exception):
    """Internal marker: the job was cancelled before it ran."""


def _run_handler(handler: Handler, status: int, run_ns: int, payload: bytes) -> None:
    """Delivers a job's outcome; a failing user callback is reported, never raised
    into whichever thread happens to deliver (the result thread, or a waiter)."""
    try:
        handler(status, run_ns, payload)
    except (Exception, SystemExit):  # noqa: BLE001 - Ctrl-C in the caller's own thread still goes up
        _report_handler_failure()


def _report_handler_failure() -> None:
    import traceback

    traceback.print_exc()
    log.error("a result callback raised; the pool goes on", exc_info=True)


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode(status: int, payload: bytes) -> tuple[bool, Any]:
    """(True, value) for a result; (False, exception) for every other ending."""
    try:
        return _decode(status, payload)
    except BaseException as exc:  # noqa: BLE001 - e.g. a class the parent cannot import; SystemExit too
        return False, transfer_error("the task's result", exc)


def _decode(status: int, payload: bytes) -> tuple[bool, Any]:
    if status == OK:
        return True, unpack(payload, adopt=True)  # the result's objects own its arena blocks
    if status == ERROR:
        return False, loads_exception(payload)
    if status == WORKER_LOST:
        return False, WorkerLostError(payload.decode())
    if status == INLINE_OK:
        return True, payload
    if status == INLINE_ERROR:
        return False, payload
    if status == CANCELLED:
        return False, Cancelled()
    if status == TIMED_OUT:
        return False, TimeoutError(payload.decode())
    if status == MEMORY_EXCEEDED:
        return False, MemoryLimitError(payload.decode())
    return False, BrokenPoolError(payload.decode())


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


def _check_timeout(timeout: Optional[float]) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"a task's timeout must be a number of seconds, not {timeout!r}")
    if timeout <= 0:
        raise ValueError(f"a task's timeout must be positive, not {timeout!r}")
    return float(timeout)


START_METHODS = ("forkserver", "fork", "spawn", "inline")


def check_start_method(start_method: str, context: Any) -> str:
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


def check_chunksize(chunksize: Any, message: str) -> None:
    """``None`` (sized from the measured task time) or an int of at least 1."""
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an integer, not {chunksize!r}")
    if chunksize < 1:
        raise ValueError(message)


class Prepared:
    """A callable pickled once, for the many jobs of one map: its state is the
    one it had when the map was called (as the stdlib pickles it with every
    task it submits at that moment)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


class _ReleasingHandler:
    """Calls a job's handler, then drops the arena blocks its arguments used."""

    __slots__ = ("arena", "payload", "handler")

    def __init__(self, arena: Any, payload: bytes, handler: Handler) -> None:
        self.arena, self.payload, self.handler = arena, payload, handler

    def __call__(self, status: int, run_ns: int, payload: bytes) -> None:
        try:
            self.handler(status, run_ns, payload)
        finally:
            self.release()

    def release(self) -> None:
        release(self.payload, self.arena)


class Runtime:
    """Runs tasks in worker processes through the C++ engine."""

    def __init__(
        self,
        workers: Optional[int],
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: Optional[int] = None,
        start_method: str = "forkserver",
        *,
        cancel_at_exit: bool = False,
        max_memory_per_worker: Union[int, str, None] = None,
        shm_limit: Union[int, str, None] = None,
    ) -> None:
        if importing_main():
            raise RuntimeError(_IMPORTING_MAIN)
        if workers is None:
            workers = default_workers()
        initargs = tuple(initargs)
        # The fork server imports what the parent already uses, so workers start warm.
        preload = [m for m in ("cloudpickle", "numpy") if m in sys.modules]
        hard_limit = parse_bytes(max_memory_per_worker)
        # Buffers of 64 KiB and more (numpy arrays, bytes) travel through this
        # arena as zero-copy views instead of inside the pickles.
        self._arena = _core.Arena.create(parse_bytes(shm_limit) or None)
        config = {"preload": preload, "arena": self._arena.name}
        self.workers = workers
        forked = start_method in ("forkserver", "fork")
        init = (initializer, initargs) if initializer is not None else None
        token = next(_init_tokens)
        server = fork_fork_server(config, start_method == "fork", init, token) if forked else None
        init_payload = b""
        if server is not None and init is not None:
            # Inherited as multiprocessing's fork children inherit it: an
            # mp.Queue, Lock or Event works, and nothing is pickled.
            init_payload = dumps((run_inherited_initializer, (token,)))
        elif init is not None:
            try:
                init_payload = dumps(init, "the initializer and initargs")
            except RuntimeError as error:  # e.g. "Queue objects should only be shared ... through inheritance"
                if hasattr(error, "add_note"):
                    error.add_note(
                        "a fresh worker interpreter cannot inherit it: pass shoal.Queue / shoal.Lock / shoal.Event "
                        "(they travel by name under every start method), or use start_method='forkserver' or 'fork' "
                        "and create the pool before other threads start"
                    )
                raise
        self._engine = _core.Engine(
            workers=workers,
            fork_server=forked,
            argv=child_argv("forkserver" if forked else "spawn", config),
            ring_bytes=_RING_BYTES,
            init_payload=init_payload,
            max_tasks_per_child=max_tasks_per_child or 0,
            fork_server_pid=server[0] if server else -1,
            fork_server_fd=server[1] if server else -1,
            memory_hard_limit=hard_limit,
            memory_soft_limit=int(hard_limit * MEMORY_SOFT_FRACTION),
        )
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()  # one engine shutdown at a time
        self._feeds: set[MapFeed] = set()  # maps still reading input: shutdown waits for them
        self._engine_closing = False  # shutdown began: the last feed to finish closes the engine
        self._handlers: dict[int, Handler] = {}
        self._job_ids = itertools.count(1)
        self._functions: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._last_function: tuple[Any, int] = (None, 0)  # (fn, id) of the latest submit
        self._cancel_at_exit = cancel_at_exit
        self._collector = threading.Thread(target=self._collect, name="shoal-results", daemon=True)
        self._collector.start()
        _live.add(self)
        _clean_up_on_sigterm()

    # -- submitting -----------------------------------------------------------

    @staticmethod
    def prepare(fn: Callable[..., Any]) -> Any:
        """What a map hands to submit() for each of its chunks: ``fn`` itself
        if it travels by reference, else its bytes, pickled once now."""
        return fn if by_reference(fn) else Prepared(dumps_callable(fn))

    def _function_id(self, fn: Any) -> int:
        """The engine's id for ``fn``'s pickle, defined on first use.

        Module-level functions and classes are keyed by identity (their pickle
        is their name). Everything else (bound methods, partials, closures) is
        keyed by its pickled bytes: a changed object is a new function for the
        workers, never a stale cached one.
        """
        last = self._last_function
        if fn is last[0]:  # task after task of the same function (or map)
            return last[1]
        if type(fn) is Prepared:
            key: Any = fn.blob
            blob = fn.blob
            keep: Any = fn
        elif by_reference(fn):
            key, blob, keep = id(fn), None, fn  # holding fn keeps its id() unique
        else:
            key = blob = dumps_callable(fn)
            keep = None
        entry = self._functions.get(key)
        if entry is None:
            entry = (keep, self._engine.define_function(blob if blob is not None else dumps_callable(fn)))
            with self._lock:
                self._functions[key] = entry
                while len(self._functions) > _FUNCTION_CACHE:  # the least recently used goes first
                    _, (_, old_id) = self._functions.popitem(last=False)
                    self._engine.drop_function(old_id)
        else:
            with self._lock:
                if key in self._functions:
                    self._functions.move_to_end(key)
        if keep is not None:
            self._last_function = (keep, entry[1])
        return entry[1]

    def check_usable(self) -> None:
        reason = self._engine.broken()
        if reason is not None:
            raise BrokenPoolError(reason)

    def submit(
        self, fn: Callable[..., Any], tag: int, payload: bytes, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        return self.submit_as(self._function_id(fn), tag, payload, handler, retries, timeout)

    def submit_as(
        self, fn_id: int, tag: int, payload: bytes, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        if payload[:8] == _PACKED:  # it holds arena blocks: free them when the job ends
            handler = _ReleasingHandler(self._arena, payload, handler)
        job_id = next(self._job_ids)  # atomic under the GIL
        self._handlers[job_id] = handler  # filed before the job can finish
        try:
            limit = 0.0 if timeout is None else _check_timeout(timeout)
            self._engine.submit_as(job_id, fn_id, tag, payload, retries, limit)
        except BaseException:
            del self._handlers[job_id]
            raise
        return job_id

    def submit_call(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        """Submits ``fn(*args, **kwargs)``. A callable or argument that cannot
        be pickled fails the job (through ``handler``, as the stdlib fails the
        future), not the call; a full arena raises MemoryError here."""
        if timeout is not None:
            _check_timeout(timeout)
        try:
            fn_id = self._function_id(fn)
            payload = pack_call(args, kwargs, self._arena)
        except MemoryError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the pickler's error, for the caller's result
            handler(INLINE_ERROR, 0, as_pickling_error(exc))
            return 0
        return self.submit_as(fn_id, CALL, payload, handler, retries, timeout)

    @property
    def inline_payload_limit(self) -> int:
        """The largest payload that travels inside a ring frame (larger ones are spilled)."""
        return self._engine.inline_payload_limit

    def pack_chunk(self, chunk: list, inband: bool = False) -> bytes:
        """A map chunk's payload; ``inband``: its buffers inside the pickle (the arena is full)."""
        if inband:
            return pack(chunk, self._arena, threshold=sys.maxsize, what="map item")
        return pack(chunk, self._arena, what="map item")

    def wait_for_job(self, job_id: int, timeout: Optional[float]) -> Optional[float]:
        """Waits until job `job_id` finished (or `timeout` passed) and runs its
        handler in this thread: the result goes from the worker's outbox to the
        caller without a hop through the engine and collector threads.
        Returns at once if another thread already took the job's result.
        Returns what is left of `timeout`, for the caller's own wait."""
        if threading.current_thread() is self._collector:
            return timeout  # a callback waiting on another future: the collector must keep collecting
        deadline = None if timeout is None else time.monotonic() + timeout
        got = self._engine.wait_for(job_id, timeout)
        if got:  # None: timed out; False: the collector has it
            handler = self._handlers.pop(job_id, None)
            if handler is not None:
                _run_handler(handler, *got)
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def queued(self, job_id: int) -> bool:
        """Whether the job still waits for a worker."""
        return self._engine.queued(job_id)

    def cancel(self, job_id: int) -> bool:
        if self._engine.cancel(job_id):
            handler = self._handlers.pop(job_id, None)
            if isinstance(handler, _ReleasingHandler):
                handler.release()
            return True
        return False

    # -- results --------------------------------------------------------------

    def _collect(self) -> None:
        engine = self._engine
        backoff = 0.0
        while True:
            try:
                batch = engine.collect(None)
                backoff = 0.0
            except Exception:  # noqa: BLE001 - this thread must outlive any fault, or waiters hang
                log.exception("shoal's result thread could not collect results; retrying")
                backoff = min(1.0, backoff * 2 or 0.01)
                time.sleep(backoff)
                continue
            if batch is None:
                # Every worker is gone: the arena's names go too (blocks that
                # results still use stay mapped until those objects die).
                self._arena.close()
                return
            pop = self._handlers.pop
            handlers = [pop(job[0], None) for job in batch]
            for (job_id, status, run_ns, payload), handler in zip(batch, handlers):
                if handler is not None:
                    try:  # as _run_handler, without a call per result
                        handler(status, run_ns, payload)
                    except BaseException:  # noqa: BLE001 - SystemExit from a callback must not end this thread
                        _report_handler_failure()
                elif status == LOG:
                    log.log(run_ns, "%s", payload.decode(errors="replace"))
            # This thread sleeps in collect() next: it must not keep the last
            # batch's handlers (futures, maps and their results) alive meanwhile.
            batch = handlers = handler = payload = None  # type: ignore[assignment]

    # -- life cycle -----------------------------------------------------------

    def _register_feed(self, feed: "MapFeed") -> None:
        with self._lock:
            self._feeds.add(feed)

    def _feed_done(self, feed: "MapFeed") -> None:
        with self._lock:
            self._feeds.discard(feed)
            last = not self._feeds and self._engine_closing
        if last:  # shutdown(wait=False) left the engine open for this map
            with self._shutdown_lock:
                self._engine.shutdown(False, False)

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None:
        """Stops taking tasks. Maps already running read the rest of their
        input first (every item runs, as with the stdlib, whether or not its
        results are read), unless ``cancel_pending``."""
        with self._lock:
            feeds = list(self._feeds)
            self._engine_closing = True
        for feed in feeds:
            if cancel_pending:
                feed.close(force=True)
            else:
                feed.drain()
        if wait:
            for feed in feeds:
                feed.wait_read()
        with self._lock:
            open_feeds = bool(self._feeds)
        if wait or cancel_pending or not open_feeds:
            with self._shutdown_lock:
                self._engine.shutdown(wait, cancel_pending)
        if wait and threading.current_thread() is not self._collector:
            self._collector.join()

    def at_exit(self) -> None:
        if self._cancel_at_exit:
            self.terminate()
        else:
            self.shutdown(wait=True)

    def terminate(self) -> None:
        with self._lock:
            feeds = list(self._feeds)
            self._engine_closing = True
        for feed in feeds:
            feed.close(force=True)
        with self._shutdown_lock:
            self._engine.terminate()
        if threading.current_thread() is not self._collector:
            self._collector.join()

    def worker_pids(self) -> list[int]:
        return list(self._engine.worker_pids())

    def stats(self) -> dict[str, int]:
        stats = dict(self._engine.stats())
        stats["shm_used_bytes"] = 0 if self._arena.closed else self._arena.used_bytes()
        return stats

    # -- maps -----------------------------------------------------------------

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        star: bool,
        chunksize: Optional[int] = None,
        ordered: bool = True,
        retries: int = 0,
        total: Optional[int] = None,
        bounded: bool = True,
        timeout: Optional[float] = None,
        on_chunk: Optional[Callable[[int], None]] = None,
        on_complete: Optional[Callable[["MapFeed"], None]] = None,
        gather: bool = False,
    ) -> "MapFeed":
        """Starts a map. ``bounded``: stop reading input while the consumer is far behind.
        ``on_chunk(n)`` runs when n more items finished; ``on_complete(feed)`` once all did.
        ``gather``: the results are wanted whole (``feed.gathered()``), not chunk by chunk."""
        if timeout is not None and chunksize is None:
            chunksize = 1  # a time limit is per task: one task per job
        feed = MapFeed(self, fn, iter(items), MAP_STAR if star else MAP_ONE, chunksize, ordered, retries, total, bounded)
        feed.timeout = timeout
        return feed.start(on_chunk, on_complete, gather)


class MapFeed:
    """One map's flow: reads the input lazily, in chunks sized to the measured
    task time, keeps a bounded number of chunks in flight, and yields results
    (in input order, or as they finish).

    Refills happen both when a chunk finishes (collector thread) and when the
    consumer takes results, so a map runs to completion even if nobody reads
    it yet (map_async), while memory stays bounded by the read-ahead.
    """

    TARGET_CHUNK_NS = 5_000_000  # ~5 ms of work per chunk amortises the per-chunk cost
    # Chunks and their results stay this far under the size that travels
    # inline in the ring: a spilled payload gets a segment of its own, and
    # both processes fault in every page of it.
    INLINE_SHARE = 0.8
    # Weight kept by the older samples of task time and size at each new chunk.
    DECAY = 0.7

    def __init__(
        self, runtime: Runtime, fn, items: Iterator[Any], tag: int, chunksize, ordered: bool, retries: int, total, bounded: bool
    ):
        self._runtime = runtime
        self._fn = fn
        self._items = items
        self._tag = tag
        self._fixed_chunk = chunksize
        self._ordered = ordered
        self._retries = retries
        self._remaining = total
        self._cond = threading.Condition()
        self._next_chunk = 0  # index of the next chunk to submit
        self._next_yield = 0  # ordered: index of the next chunk to hand out
        self._finished: dict[int, tuple[list, dict[int, BaseException], int]] = {}
        # Gathering maps put each chunk's values in place as it finishes (mp.Pool
        # does too): no list of the whole result is built after the last one.
        self._gathered: Optional[list] = None
        self._gather_failures: dict[int, BaseException] = {}  # by item index
        self._items_read = 0
        self._in_flight: dict[int, int] = {}  # chunk index -> job id
        self._held_items = 0  # submitted but not yet handed out
        self._exhausted = False
        self._input_error: Optional[BaseException] = None
        self._closed = False
        # Decayed sums of the finished chunks' run time and items: big chunks
        # weigh more than the first tiny ones, whose fixed costs would
        # otherwise pass for a slow task.
        self._run_ns = 0.0
        self._run_items = 0.0
        self._bytes_per_item = 0.0  # the larger of arguments and results, recently
        self._inline_bytes = runtime.inline_payload_limit * self.INLINE_SHARE
        self._growth = 1
        self._max_in_flight = 2 * runtime.workers + 2
        self._bounded = bounded
        self._refilling = False
        self._completion_reported = False
        self._abandoned = False  # nobody will read the results: discard them as they come
        self._stalled: Optional[list] = None  # a chunk read but waiting for room in the arena
        self.timeout: Optional[float] = None
        self.on_chunk: Optional[Callable[[int], None]] = None  # items finished, for progress bars
        self.on_complete: Optional[Callable[["MapFeed"], None]] = None  # every chunk finished
        try:
            self._fn = runtime.prepare(fn)
        except Exception as exc:  # noqa: BLE001 - an unpicklable callable fails the map's results
            self._input_error = exc
            self._exhausted = True

    def start(self, on_chunk=None, on_complete=None, gather: bool = False) -> "MapFeed":
        self.on_chunk, self.on_complete = on_chunk, on_complete
        if gather:
            self._gathered = [None] * self._remaining if self._remaining is not None else []
        register = getattr(self._runtime, "_register_feed", None)
        if register is not None and not self._exhausted:
            register(self)
        with self._cond:
            self._refill_locked()
        self._report_if_complete()
        return self

    # -- when nobody reads, and at shutdown ---------------------------------------

    def drain(self) -> None:
        """The pool is shutting down: read the rest of the input now, whatever
        the consumer's pace (the stdlib has submitted every item by now)."""
        with self._cond:
            self._bounded = False
            self._refill_locked()
        self._report_if_complete()

    def abandon(self) -> None:
        """The consumer is gone: every item still runs, its result is dropped,
        and an input error is logged (no one is left to raise it to)."""
        with self._cond:
            if self._closed:
                return
            self._abandoned = True
            self._bounded = False
            self._finished.clear()
            self._refill_locked()
            error = self._input_error
        if error is not None:
            log.error("the input of an unread map failed: %r", error, exc_info=error)
        self._report_if_complete()

    def wait_read(self) -> None:
        """Waits until every input item is submitted (or the map was closed)."""
        with self._cond:
            while not ((self._exhausted and self._stalled is None) or self._closed):
                self._cond.wait(0.1)

    def _report_if_complete(self) -> None:
        with self._cond:
            if self._completion_reported or not (self._exhausted and self._stalled is None and not self._in_flight):
                return
            self._completion_reported = True
        done = getattr(self._runtime, "_feed_done", None)
        if done is not None:
            done(self)
        if self.on_complete is not None:
            self.on_complete(self)

    # -- feeding --------------------------------------------------------------

    def _chunk_size(self) -> int:
        if self._fixed_chunk:
            return self._fixed_chunk
        if not self._run_items:
            size = self._growth  # 1, 2, 4, ... until a chunk reports its time
            self._growth = min(self._growth * 2, 64)
        else:
            size = int(self.TARGET_CHUNK_NS * self._run_items / max(self._run_ns, 1.0))
        if self._bytes_per_item:
            size = min(size, int(self._inline_bytes / self._bytes_per_item))
        if self._remaining is not None:
            # Leave enough chunks for every worker near the end of a known input.
            size = min(size, -(-self._remaining // (2 * self._runtime.workers)))
        return max(1, min(size, 100_000))

    def _refill_locked(self) -> None:
        if self._refilling:  # a serial runtime finishes jobs inside submit(): no recursion
            return
        self._refilling = True
        try:
            self._refill_loop()
        finally:
            self._refilling = False

    def _refill_loop(self) -> None:
        while (self._stalled is not None or not self._exhausted) and not self._closed and len(self._in_flight) < self._max_in_flight:
            if self._bounded and self._held_items > 64 * self._max_in_flight * (self._fixed_chunk or 1) + 100_000:
                return  # the consumer is behind: stop reading ahead
            chunk, self._stalled = self._stalled, None
            if chunk is None:
                chunk = self._read_chunk()
                if not chunk:
                    self._cond.notify_all()
                    return
            try:
                try:
                    payload = self._runtime.pack_chunk(chunk)
                except MemoryError:
                    if self._in_flight:  # the arena is full of this map's own chunks: wait for one to finish
                        self._stalled = chunk
                        return
                    payload = self._runtime.pack_chunk(chunk, inband=True)  # slower, but it goes
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - an item that cannot be pickled fails its chunk
                self._fail_chunk(chunk, as_pickling_error(exc))
                continue
            index, start = self._file_chunk(chunk)
            if type(payload) is bytes:  # the serial runtime hands over the list itself
                self._note_size(len(payload), len(chunk))
            self._in_flight[index] = 0  # filed first: a serial runtime completes it inside submit()
            try:
                job_id = self._runtime.submit(
                    self._fn, self._tag, payload, partial(self._done, index, start, len(chunk)),
                    self._retries, self.timeout,
                )
            except MemoryError as exc:  # the arena is full: the map fails at this item
                del self._in_flight[index]
                self._input_error = exc
                self._exhausted = True
                self._cond.notify_all()
                return
            except (ValueError, RuntimeError) as exc:  # the pool was shut down under this map
                del self._in_flight[index]
                self._input_error = RuntimeError(f"the pool stopped before this map finished: {exc}")
                self._exhausted = True
                self._cond.notify_all()
                return
            if index in self._in_flight:
                self._in_flight[index] = job_id

    def _read_chunk(self) -> list:
        size = self._chunk_size()
        chunk: list = []
        try:
            chunk.extend(islice(self._items, size))  # keeps the items read before a failure
        except BaseException as exc:  # noqa: BLE001 - surfaces in the consumer
            self._input_error = exc
            self._exhausted = True
            if self._abandoned:
                log.error("the input of an unread map failed: %r", exc, exc_info=exc)
        if len(chunk) < size:
            self._exhausted = True
        return chunk

    def _file_chunk(self, chunk: list) -> tuple[int, int]:
        """Numbers a chunk about to be submitted: (chunk index, index of its first item)."""
        index = self._next_chunk
        self._next_chunk += 1
        if self._remaining is not None:
            self._remaining -= len(chunk)
        self._held_items += len(chunk)
        start = self._items_read
        self._items_read += len(chunk)
        return index, start

    def _fail_chunk(self, chunk: list, error: BaseException) -> None:
        """Every item of ``chunk`` fails with ``error`` (as the stdlib fails each
        future whose arguments it could not pickle); the map goes on."""
        index, start = self._file_chunk(chunk)
        count = len(chunk)
        failures = {i: error for i in range(count)}
        if self._abandoned:
            log.error("items of an unread map could not be pickled: %r", error)
        elif self._gathered is not None:
            self._gather(start, [None] * count, failures)
        else:
            self._finished[index] = ([None] * count, failures, count)
        self._cond.notify_all()

    def _done(self, index: int, start: int, count: int, status: int, run_ns: int, payload: bytes) -> None:
        if status == OK and count:
            self._run_ns = self.DECAY * self._run_ns + run_ns
            self._run_items = self.DECAY * self._run_items + count
            self._note_size(len(payload), count)
        values, failures = self._decode_chunk(status, payload, count)  # frees its blocks if dropped
        if self._gathered is not None and not self._abandoned:
            self._gather(start, values, failures)
        with self._cond:
            self._in_flight.pop(index, None)
            if self._gathered is None and not self._abandoned:
                self._finished[index] = (values, failures, count)
            self._refill_locked()
            self._cond.notify_all()
        if self.on_chunk is not None:
            self.on_chunk(count)
        self._report_if_complete()

    def _note_size(self, payload_bytes: int, count: int) -> None:
        sample = payload_bytes / count
        if sample >= self._bytes_per_item:
            self._bytes_per_item = sample  # growing items: follow at once
        else:
            self._bytes_per_item = self.DECAY * self._bytes_per_item + (1 - self.DECAY) * sample

    @staticmethod
    def _decode_chunk(status: int, payload: Any, count: int) -> tuple[list, dict[int, BaseException]]:
        if status == INLINE_OK:
            return payload
        if status == ERROR:
            try:
                values, failed = unpack(payload, adopt=True)
                return values, {i: loads_exception(p) for i, p in failed.items()}
            except BaseException:  # noqa: BLE001 - not a per-item report: the whole chunk failed
                try:
                    exc = loads_exception(payload)
                except BaseException as error:  # noqa: BLE001 - nor an exception this process can load
                    exc = transfer_error("the map's results", error)
                return [None] * count, {i: exc for i in range(count)}
        ok, value = decode(status, payload)
        if ok:
            return value, {}
        return [None] * count, {i: value for i in range(count)}

    def complete(self) -> bool:
        """True once every chunk has finished (all input read)."""
        with self._cond:
            return self._exhausted and not self._in_flight

    def _gather(self, start: int, values: list, failures: dict[int, BaseException]) -> None:
        gathered = self._gathered
        end = start + len(values)
        if end > len(gathered):  # an input of unknown length
            gathered.extend([None] * (end - len(gathered)))
        gathered[start:end] = values  # chunks cover disjoint slices: no lock needed
        for i, exc in failures.items():
            self._gather_failures[start + i] = exc

    def gathered(self) -> tuple[list, dict[int, BaseException]]:
        """A gathering map's results in input order, and its failures by item
        index; raises what the input iterable raised, if it failed."""
        with self._cond:
            if self._input_error is not None:
                raise self._input_error
            return self._gathered, self._gather_failures

    # -- consuming ------------------------------------------------------------

    def chunks(self, deadline: Optional[float] = None) -> Iterator[tuple[list, dict[int, BaseException], int]]:
        """Yields (values, failures by index, count) per chunk, ordered or as finished."""
        try:
            while True:
                with self._cond:
                    while True:
                        if self._ordered:
                            ready = self._next_yield in self._finished
                            key = self._next_yield
                        else:
                            ready = bool(self._finished)
                            key = next(iter(self._finished)) if ready else None
                        if ready:
                            break
                        if self._exhausted and not self._in_flight and not self._finished:
                            if self._input_error is not None:
                                raise self._input_error
                            return
                        timeout = None
                        if deadline is not None:
                            timeout = deadline - time.monotonic()
                            if timeout <= 0:
                                raise TimeoutError("map results did not arrive within the timeout")
                        self._cond.wait(min(timeout, 0.1) if timeout is not None else 0.1)
                    values, failures, count = self._finished.pop(key)
                    if self._ordered:
                        self._next_yield += 1
                    self._held_items -= count
                    self._refill_locked()
                yield values, failures, count
        finally:
            if not self._exhausted or self._in_flight:
                self.close()

    def close(self, force: bool = False) -> None:
        """Stops reading input and cancels the chunks no worker took yet
        (``force``: even if the map was abandoned to run to its end)."""
        with self._cond:
            if self._abandoned and not force:
                return
            self._closed = True
            in_flight = list(self._in_flight.values())
            self._cond.notify_all()
        for job_id in in_flight:
            self._runtime.cancel(job_id)
        done = getattr(self._runtime, "_feed_done", None)
        if done is not None:
            done(self)
