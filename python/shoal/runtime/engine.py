"""The engine's Python face, shared by Executor and Pool.

A Runtime owns one C++ engine (and so the workers), a table of callables
already sent to workers, and one thread that takes finished jobs from the
engine in batches (waiting with the GIL released) and calls each one's
handler. The engine owns each job from submit to its end: it gives the id,
keeps the handler with the job and hands it back with the job's end, and
drops the arena blocks of its arguments then.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from .. import _core
from ..errors import BrokenPoolError
from ..obs.reader import snapshot_from_raw
from ..obs.snapshot import PoolSnapshot
from ..obs.trace import Trace
from ..wire.payload import BufferMemo, is_packed, pack, pack_callable, pickle_call, release
from ..wire.pickling import as_pickling_error, by_reference, dumps, dumps_callable
from ..wire.protocol import CALL, LOG
from ..worker.cores import cores_config
from ..worker.bootstrap import (
    child_argv,
    fork_fork_server,
    importing_main,
    pickle_for_fresh_workers,
    run_inherited_initializer,
)
from . import lifecycle
from .map_feed import MapFeed
from .monitoring import PoolMonitoring
from .options import PoolOptions, check_timeout
from .outcome import INLINE_ERROR, Handler, log, run_handler, report_handler_failure

if TYPE_CHECKING:
    from .interface import Task

_FUNCTION_CACHE = 256
# A worker whose resident memory passes this share of max_memory_per_worker
# after a task is replaced before it takes the next one.
MEMORY_SOFT_FRACTION = 0.8
_RING_BYTES = 1 << 20


_init_tokens = itertools.count(1)
_NO_FUNCTION = object()  # what Runtime._last_function holds before a first submit

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


def _program_name() -> str:
    """What `shoal top` calls a pool: the script (or module) that made it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        name: str = spec.name
        return (name[: -len(".__main__")] if name.endswith(".__main__") else name)[:47]
    return (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python")[:47]


class Prepared:
    """A callable pickled once, for the many jobs of one map: its state is the
    one it had when the map was called (as the stdlib pickles it with every
    task it submits at that moment)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


class Runtime:
    """Runs tasks in worker processes through the C++ engine."""

    default_chunksize: Optional[int] = None  # sized from the measured task time (MapFeed)

    def __init__(self, options: PoolOptions) -> None:
        if importing_main():
            raise RuntimeError(_IMPORTING_MAIN)
        # First: a trace file that cannot be written or a port in use fails
        # the pool before any process starts.
        self._monitoring = PoolMonitoring(options)
        workers, start_method = options.workers, options.start_method
        # The fork server imports what the parent already uses, so workers start warm.
        preload = [m for m in ("cloudpickle", "numpy") if m in sys.modules]
        hard_limit = options.max_memory_per_worker
        # Buffers of 64 KiB and more (numpy arrays, bytes) travel through this
        # arena as zero-copy views instead of inside the pickles.
        self._arena = _core.Arena.create(options.shm_limit or None)
        config = {"preload": preload, "arena": self._arena.name, "cores": cores_config(options)}
        self.workers = workers
        forked = start_method in ("forkserver", "fork")
        init = (options.initializer, options.initargs) if options.initializer is not None else None
        token = next(_init_tokens)
        server = fork_fork_server(config, start_method == "fork", init, token) if forked else None
        init_payload = b""
        # Descriptors the initializer's arguments hand to fresh workers: open
        # here until the engine is gone (its workers may be restarted).
        self._inherited_fds: list[int] = []
        if server is not None and init is not None:
            # Inherited as multiprocessing's fork children inherit it: an
            # mp.Queue, Lock or Event works, and nothing is pickled.
            init_payload = dumps((run_inherited_initializer, (token,)))
        elif init is not None:
            try:
                try:
                    init_payload, self._inherited_fds = pickle_for_fresh_workers(init)
                except RuntimeError:
                    raise
                except Exception:  # noqa: BLE001 - not picklable by reference (a lambda): cloudpickle
                    init_payload = dumps(init, "the initializer and initargs")
            except RuntimeError as error:  # e.g. "A SemLock created in a fork context ..."
                if hasattr(error, "add_note"):
                    error.add_note(
                        "a fresh worker interpreter cannot inherit it: pass shoal.Queue / shoal.Lock / shoal.Event "
                        "(they travel by name under every start method), or use start_method='forkserver' or 'fork' "
                        "and create the pool before other threads start"
                    )
                raise
        try:
            self._engine = _core.Engine(
                workers=workers,
                fork_server=forked,
                argv=child_argv("forkserver" if forked else "spawn", config),
                ring_bytes=_RING_BYTES,
                init_payload=init_payload,
                max_tasks_per_child=options.max_tasks_per_child,
                fork_server_pid=server[0] if server else -1,
                fork_server_fd=server[1] if server else -1,
                memory_hard_limit=hard_limit,
                memory_soft_limit=int(hard_limit * MEMORY_SOFT_FRACTION),
                arena=self._arena,
                inherited_fds=self._inherited_fds,
                pool_kind=options.surface,
                pool_label=_program_name(),
            )
        except BaseException:
            self._monitoring.close()
            self._close_inherited_fds()
            raise
        self.dashboard_url = self._monitoring.dashboard_url
        self.metrics_url = self._monitoring.metrics_url
        self._pool_name: str = self._engine.stats_name  # log records' `pool`: the stats block, as shoal top lists it
        self._monitoring.attach(self._engine)
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()  # one engine shutdown at a time
        self._feeds: set[MapFeed] = set()  # maps still reading input: shutdown waits for them
        self._engine_closing = False  # shutdown began: the last feed to finish closes the engine
        # By id() or pickled bytes (see _function_id): (what keeps the key valid, engine id).
        self._functions: OrderedDict[Union[int, bytes], tuple[Optional[Task], int]] = OrderedDict()
        # (fn, id) of the latest submit; _NO_FUNCTION before the first, never
        # None, which is a callable's value a caller may pass (and get a TypeError).
        self._last_function: tuple[object, int] = (_NO_FUNCTION, 0)
        self._cancel_at_exit = options.cancel_at_exit
        self._collector = threading.Thread(target=self._collect, name="shoal-results", daemon=True)
        self._collector.start()
        lifecycle.register(self)
        lifecycle.clean_up_on_sigterm()

    # -- submitting -----------------------------------------------------------

    def prepare(self, fn: Callable[..., Any]) -> Task:
        """What a map hands to submit() for each of its chunks: ``fn`` itself
        if it travels by reference, else its bytes, pickled once now, with
        the big buffers bound into it in the arena. It is defined in the
        engine at once, which from then on owns the arena references."""
        if by_reference(fn):
            return fn
        prepared = Prepared(pack_callable(fn, self._arena))
        try:
            self._function_id(prepared)
        except BaseException:
            release(prepared.blob, self._arena)
            raise
        return prepared

    def forget(self, prepared: Task) -> None:
        """Drops a packed Prepared's definition once its map has ended: its
        blocks are that map's alone (a new map packs anew), and the engine
        releases them now instead of when 256 other functions have pushed it
        out of the cache."""
        if type(prepared) is not Prepared or not is_packed(prepared.blob):
            return
        with self._lock:
            entry = self._functions.pop(prepared.blob, None)
            if self._last_function[0] is prepared:
                self._last_function = (_NO_FUNCTION, 0)
        if entry is not None:
            self._engine.drop_function(entry[1])

    def _function_id(self, fn: Task) -> int:
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
            key: Union[int, bytes] = fn.blob
            blob: Optional[bytes] = fn.blob
            keep: Optional[Task] = fn
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
        self, fn: Task, tag: int, payload: bytes, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        return self.submit_as(self._function_id(fn), tag, payload, handler, retries, timeout)

    def submit_as(
        self, fn_id: int, tag: int, payload: bytes, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int:
        limit = 0.0 if timeout is None else check_timeout(timeout)
        return self._engine.submit(fn_id, tag, payload, handler, retries, limit)

    def submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Handler,
        retries: int = 0,
        timeout: Optional[float] = None,
    ) -> int:
        """Submits ``fn(*args, **kwargs)``. A callable or argument that cannot
        be pickled fails the job (through ``handler``, as the stdlib fails the
        future), not the call; a full arena raises MemoryError here."""
        # submit_as() and _function_id()'s fast path, inlined: every submit
        # runs this, and each Python call shows.
        limit = 0.0 if timeout is None else check_timeout(timeout)
        try:
            last = self._last_function
            fn_id = last[1] if fn is last[0] else self._function_id(fn)
            payload = pickle_call(args, kwargs)
            if payload is None:
                payload = pack((args, kwargs), self._arena)
        except MemoryError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the pickler's error, for the caller's result
            handler(INLINE_ERROR, 0, as_pickling_error(exc))
            return 0
        return self._engine.submit(fn_id, CALL, payload, handler, retries, limit)

    @property
    def inline_payload_limit(self) -> int:
        """The largest payload that travels inside a ring frame (larger ones are spilled)."""
        return self._engine.inline_payload_limit

    def pack_chunk(self, chunk: list[Any], inband: bool = False, memo: Optional[BufferMemo] = None) -> bytes:
        """A map chunk's payload; ``inband``: its buffers inside the pickle (the
        arena is full); ``memo``: the map's copies of buffers repeated in its items."""
        if inband:
            return pack(chunk, self._arena, threshold=sys.maxsize, what="map item")
        return pack(chunk, self._arena, what="map item", memo=memo)

    def take_job(self, job_id: int, timeout: Optional[float]) -> bool:
        """Waits until job `job_id` finished (or `timeout` passed) and runs its
        handler in this thread: the result goes from the worker's outbox to the
        caller without a hop through the engine and collector threads. True if
        the handler ran here, or the wait timed out; False at once if another
        thread (the collector) has the result."""
        if threading.current_thread() is self._collector:
            return False  # a callback waiting on another future: the collector must keep collecting
        got = self._engine.wait_for(job_id, timeout)
        if got:
            run_handler(*got)
            return True
        return got is None  # None: timed out; False: the collector has it

    def queued(self, job_id: int) -> bool:
        """Whether the job still waits for a worker."""
        return self._engine.queued(job_id)

    def cancel(self, job_id: int) -> bool:
        """Removes a job no worker holds yet; its handler is not called."""
        return bool(self._engine.cancel(job_id))

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
                # results still use stay mapped until those objects die), and
                # the descriptors kept for workers yet to start.
                self._monitoring.close()  # the trace is written, the servers stop
                self._arena.close()
                self._close_inherited_fds()
                return
            for handler, status, run_ns, payload in batch:
                if handler is not None:
                    try:  # as _run_handler, without a call per result
                        handler(status, run_ns, payload)
                    except BaseException:  # noqa: BLE001 - SystemExit from a callback must not end this thread
                        report_handler_failure()
                elif status == LOG:
                    text: bytes
                    worker: int
                    job: int
                    text, worker, job = payload
                    extra = {"pool": self._pool_name, "worker": None if worker < 0 else worker, "job": job or None}
                    log.log(run_ns, "%s", text.decode(errors="replace"), extra=extra)
            # This thread sleeps in collect() next: it must not keep the last
            # batch's handlers (futures, maps and their results) alive meanwhile.
            batch = None
            handler = payload = None

    # -- life cycle -----------------------------------------------------------

    def join_trace(self, trace: Trace) -> None:
        """A ``shoal.trace()`` that starts while this pool runs records it too
        (unless the pool records its own, ``trace=``: a pool's rings have one reader)."""
        if self._monitoring.trace is None:
            trace.add(self._engine)

    def _close_inherited_fds(self) -> None:
        fds, self._inherited_fds = self._inherited_fds, []
        for fd in fds:
            os.close(fd)

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
            # Every chunk finishes before the engine stops taking jobs, so that
            # the items after one whose worker died can still run again; not
            # in the result thread (a callback), which delivers those ends.
            finished = threading.current_thread() is not self._collector
            for feed in feeds:
                feed.wait_read(finished)
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

    def stats(self) -> PoolSnapshot:
        return snapshot_from_raw(self._engine.stats_snapshot())

