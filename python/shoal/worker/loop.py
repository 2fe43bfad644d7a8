"""The worker process: takes frames from its inbox ring, runs tasks, sends results.

Everything that waits or touches shared memory happens in the C++ endpoint
(with the GIL released); this loop only calls the user's functions.
"""
from __future__ import annotations

import os
import reprlib
import signal
import sys
from itertools import starmap
from time import perf_counter_ns
from typing import Any, Callable, Optional, Tuple

from .. import _core
from ..shm.arena import pin_arenas, set_worker_arena
from ..wire.payload import is_packed, pack, pickle_value, release, unpack
from ..wire.pickling import (
    PICKLE_PROTOCOL_5,
    as_pickling_error,
    dumps_exception,
    exception_text,
    loads,
    transfer_error,
)
from ..wire.protocol import CALL, DEFINE_FUNCTION, DROP_FUNCTION, ERROR, INITIALIZE, JOB, MAP_STAR, OK
from . import cores
from .stdio import text_stream


_worker_id: Optional[int] = None
_arena: Optional[_core.Arena] = None  # the pool's shared-memory arena: big buffers travel through it
# Freed 1 MiB heap arenas a busy worker keeps for reuse (given back when idle).
_HEAP_CACHE_ARENAS = 32
# A map chunk sends its results ahead this often (of run time), so that if its
# worker dies inside it the items that finished keep their results; those of
# the last stretch, not yet sent, run again.
PUBLISH_NS = 1_000_000


# The stats block's off switch, for measuring what keeping it costs
# (docs/benchmarks.md): SHOAL_STATS=0 leaves every worker's stats untouched.
_STATS = os.environ.get("SHOAL_STATS", "1") != "0"

class _ArgumentsRepr(reprlib.Repr):
    """Bounded reprs of a slow job's arguments that run none of the user's
    code: a stdlib pool never calls __repr__ on arguments, so neither may the
    stats (it could print, be slow, or raise). Built-in scalars and
    containers are shown, bounded (a map chunk may hold a million items);
    numpy arrays by shape and dtype; anything else by its type."""

    _SHOWN = frozenset({int, float, complex, bool, type(None), str, bytes, list, tuple, dict, set, frozenset, range})

    def __init__(self) -> None:
        super().__init__()
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdict = 4
        self.maxstring = self.maxother = 40

    def repr1(self, x: Any, level: int) -> str:
        kind = type(x)
        if kind in self._SHOWN:
            return super().repr1(x, level)
        if kind.__name__ == "ndarray" and kind.__module__ == "numpy":
            return f"<ndarray shape={x.shape} dtype={x.dtype}>"
        return f"<{kind.__module__}.{kind.__qualname__} object>"


_REPR = _ArgumentsRepr()


def worker_id() -> Optional[int]:
    """The index (0..workers-1) of the worker running the current task; None outside workers."""
    return _worker_id


# What a job came to: (status, payload to send, calls made, calls that
# raised, what it was called with). The arguments are kept, as the stdlib
# pools keep them, until the result is sent: a slow job's are shown in
# insights(). A tuple: this is made once per task.
_Outcome = Tuple[int, bytes, int, int, Any]


def _failure(endpoint: _core.WorkerEndpoint, ident: int, exc: BaseException) -> bytes:
    """A task's exception, pickled with its traceback; the traceback also goes
    to the pool's recent errors (a few a second)."""
    tb = exception_text(exc)
    if endpoint.wants_error():
        endpoint.note_error(ident, tb)
    return dumps_exception(exc, tb)


def _load_function(payload: bytes) -> Callable[..., Any]:
    """A definition's callable; one that cannot be loaded here becomes a
    callable raising why, so each of its tasks fails with that (TransferError)
    and the worker goes on."""
    try:
        # Packed: a callable with big buffers bound into it (a partial of an
        # array), over the arena's blocks for as long as it is defined here.
        fn: Callable[..., Any] = unpack(payload, _arena) if is_packed(payload) else loads(payload)
        return fn
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a __setstate__ included
        error = transfer_error("the task's function", exc)

        def unloadable(*args: Any, **kwargs: Any) -> Any:
            raise error

        return unloadable


def _run_job(
    endpoint: _core.WorkerEndpoint, ident: int, fn: Callable[..., Any], tag: int, payload: bytes
) -> _Outcome:
    if tag == CALL:
        try:
            # A plain pickle (no arena blocks) is loaded directly: tiny tasks feel every call.
            args, kwargs = loads(payload) if payload.startswith(PICKLE_PROTOCOL_5) else unpack(payload, _arena)
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __setstate__ included
            return ERROR, _failure(endpoint, ident, transfer_error("the task's arguments", exc)), 1, 1, None
        if _STATS:
            endpoint.args_loaded()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure travels home
            endpoint.call_returned()
            return ERROR, _failure(endpoint, ident, exc), 1, 1, (args, kwargs)
        if _STATS:
            endpoint.call_returned()
        plain = pickle_value(result)  # a number, a str, a tuple of them: without a Pickler
        if plain is not None:
            return OK, plain, 1, 0, (args, kwargs)
        status, out = _pickled_result(result)
        return status, out, 1, 0 if status == OK else 1, (args, kwargs)
    try:
        chunk = unpack(payload, _arena)
        items = iter(chunk)
    except BaseException as exc:  # noqa: BLE001 - the whole chunk fails, the worker goes on
        return ERROR, _failure(endpoint, ident, transfer_error("the map's items", exc)), 1, 1, None
    endpoint.args_loaded()
    done = failed = 0  # items sent ahead, and how many of those raised
    results: list[Any] = []
    failures: dict[int, bytes] = {}
    calls = starmap(fn, items) if tag == MAP_STAR else map(fn, items)
    first = 0  # the index in the chunk of results[0]: the ones before it were sent ahead
    budget = PUBLISH_NS
    since = perf_counter_ns()  # when results[0] started
    while True:
        try:
            # At C speed, marking each item as it starts (what the parent
            # blames if this worker dies); a failing call leaves the results
            # before it in the list and the iterator just past the failed item.
            if not endpoint.run_items(calls, results, first, budget):
                break
        except BaseException as exc:  # noqa: BLE001 - reported per item, the chunk goes on
            failures[len(results)] = _failure(endpoint, ident, exc)
            results.append(None)
            if budget:
                budget = max(1, PUBLISH_NS - (perf_counter_ns() - since))
            continue
        # A while of results: sent ahead, so that they outlive this worker.
        status, out = _pickled_result(results, failures)
        if _pickled(status, failures):
            if endpoint.send_partial(ident, status, len(results), out):
                first += len(results)
                done += len(results)
                failed += len(failures)
                results, failures = [], {}
                budget, since = PUBLISH_NS, perf_counter_ns()
                continue
            release(out, _arena)
        budget = 0  # too big to go ahead (or not picklable): the rest goes at the end
    endpoint.call_returned()
    status, out = _pickled_result(results, failures)
    n = len(results)
    return status, out, done + n, failed + (len(failures) if _pickled(status, failures) else n), chunk


def _pickled(status: int, failures: Optional[dict[int, bytes]]) -> bool:
    """Whether _pickled_result's outcome holds the results (not the pickler's error)."""
    return status == OK or bool(failures)


def _pickled_result(result: Any, failures: Optional[dict[int, bytes]] = None) -> tuple[int, bytes]:
    """A task's result (OK), or a map chunk's with the items that failed
    (ERROR, (results, failures)); ERROR with the pickler's exception if the
    results cannot be pickled."""
    status, outcome = (ERROR, (result, failures)) if failures else (OK, result)
    try:
        try:
            return status, pack(outcome, _arena, what="result")
        except MemoryError:  # the arena is full (unread results, other maps): in the pickle instead
            return status, pack(outcome, _arena, threshold=sys.maxsize, what="result")
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ too: it fails this task only
        exc = as_pickling_error(exc)
        try:
            exc.shoal_unpicklable_result = _short_repr(result)  # type: ignore[attr-defined] # for Pool's MaybeEncodingError
        except Exception:  # noqa: BLE001 - an exception that takes no attributes
            pass
        return ERROR, dumps_exception(exc)


def _arguments_repr(items: int, arguments: Any) -> str:
    """A slow job's arguments, short: ``f(*args, **kwargs)``'s or a map chunk's items."""
    try:
        if arguments is None:
            return "<arguments not loaded>"
        if isinstance(arguments, tuple):
            args, kwargs = arguments
            parts = [_REPR.repr(a) for a in args] + [f"{k}={_REPR.repr(v)}" for k, v in kwargs.items()]
            return _shorten("(" + ", ".join(parts) + ")", 110)
        return _shorten(f"{items} items: {_REPR.repr(arguments)}", 110)
    except Exception:  # noqa: BLE001 - e.g. an int too long to convert
        return "<arguments without a repr>"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__name__} object>"
    return _shorten(text, limit)


def serve(segment: str, slot: int, arena: str, startup_error: str = "") -> None:
    """Run tasks from the pool's ring until the pool closes it (at shutdown, or
    when this worker has used up max_tasks_per_child)."""
    global _worker_id, _arena
    _worker_id = slot
    _arena = _core.Arena.attach(arena)  # held for the worker's life: mappings stay warm
    set_worker_arena(_arena)  # SharedArrays its tasks make live in the pool's arena
    # A SharedArray handed to task after task stays mapped (and its pages
    # faulted in) between tasks; recv() unmaps it once the array is freed.
    _core.Arena.cache_idle_mappings(True)
    # Likewise the object heap: a map's chunks build and free many objects each,
    # and fresh arenas would be faulted in page by page for every chunk.
    _core.cache_heap_arenas(_HEAP_CACHE_ARENAS)
    pin_arenas()  # likewise for arenas that SharedArray arguments live in
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # Workers share the parent's stdout/stderr: write whole lines, each in one
    # write(2), so lines from different workers never tear into each other.
    # The caller's own sys.stdout may be no file at all (redirect_stdout to a
    # StringIO, pytest's capture): write to the descriptors, not to that object.
    sys.stdout = text_stream(1)
    sys.stderr = text_stream(2)
    endpoint = _core.WorkerEndpoint(segment, slot)
    if startup_error:  # the interpreter could not become a worker: the pool breaks, saying why
        endpoint.send_init_failed(startup_error)
        sys.stdout.flush()
        os._exit(3)
    functions: dict[int, Callable[..., Any]] = {}
    slow_floor = endpoint.slow_floor
    while True:
        frame = endpoint.recv()
        if frame is None:
            endpoint.exiting()
            return
        kind, tag, ident, arg, payload = frame
        if kind == JOB:
            start = perf_counter_ns()
            status, out, items, failed, arguments = _run_job(endpoint, ident, functions[arg], tag, payload)
            run_ns = perf_counter_ns() - start
            # Before the result goes: whoever has it sees the stats that include it.
            if run_ns > slow_floor:  # among this worker's slowest jobs so far: keep what it was called with
                slow_floor = endpoint.note_slow(ident, run_ns, items, _arguments_repr(items, arguments))
            try:
                endpoint.send_result(ident, status, run_ns, out, items, failed)
            except MemoryError as exc:
                # Too big for the ring, and /dev/shm has no room to spill it:
                # nothing was sent; this task fails with that, the worker goes on.
                endpoint.send_result(ident, ERROR, run_ns, dumps_exception(exc), items, items)
            del arguments, out
        elif kind == DEFINE_FUNCTION:
            functions[ident] = _load_function(payload)
        elif kind == DROP_FUNCTION:
            functions.pop(ident, None)
        elif kind == INITIALIZE:
            try:
                started = perf_counter_ns()
                initializer, initargs = loads(payload)
                initializer(*initargs)
                endpoint.initialized(perf_counter_ns() - started)
            except BaseException as exc:  # noqa: BLE001
                import traceback

                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                endpoint.send_init_failed(f"the pool's initializer failed in worker {slot}:\n{text}")
                sys.stdout.flush()
                os._exit(3)


def main(segment: str, slot: int, config: dict[str, Any]) -> None:
    startup_error = config.get("startup_error", "")
    try:
        cores.claim(config, slot)
    except Exception as exc:  # noqa: BLE001 - e.g. a CPU taken offline since the pool was made
        startup_error = startup_error or f"worker {slot} could not take its CPUs (cpu_affinity=): {exc!r}"
    try:
        serve(segment, slot, config["arena"], startup_error)
    finally:
        _exit_hooks()
        sys.stdout.flush()
        sys.stderr.flush()
    # Skip interpreter teardown: the hooks above did what it would have to.
    os._exit(0)


def _exit_hooks() -> None:
    """What interpreter exit would run that matters to others: pools a task
    left open are shut down and their shared-memory names removed (shoal's
    own exit hooks), and multiprocessing's finalizers run (mp.Queue feeders
    flush), as in multiprocessing's children."""
    from ..runtime import lifecycle

    lifecycle.run_exit_hooks()
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        try:
            util._exit_function()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
