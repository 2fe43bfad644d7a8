"""A map's flow through the engine: lazy input, adaptive chunks, bounded read-ahead."""
from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Tuple

from ..wire.payload import SCALAR_TYPES, BufferMemo, freeze_item, unpack
from ..wire.pickling import as_pickling_error, loads_exception, transfer_error
from ..wire.protocol import ERROR, OK, WORKER_LOST
from .outcome import INLINE_OK, Payload, decode, log

if TYPE_CHECKING:
    from .interface import PoolRuntime, Task

#: One chunk's outcome: (values, failures by index in the chunk, item count).
Chunk = Tuple[list[Any], dict[int, BaseException], int]


class _Mending:
    """A chunk whose outcome comes in parts: the results its worker sent
    ahead, and those of re-runs of the items a dead worker did not finish."""

    __slots__ = ("items", "values", "failures")

    def __init__(self, items: Optional[list[Any]], count: int) -> None:
        self.items = items  # None: not kept, nothing can run again
        self.values: list[Any] = [None] * count
        self.failures: dict[int, BaseException] = {}

    def put(self, first: int, count: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        """Files the outcome of the items first..first+count-1."""
        self.values[first:first + count] = values[:count]
        for i, exc in failures.items():
            if i < count:
                self.failures[first + i] = exc

    def fail(self, first: int, end: int, error: BaseException) -> None:
        for i in range(first, end):
            self.failures[i] = error


class MapFeed:
    """One map's flow: reads the input lazily, in chunks sized to the measured
    task time, keeps a bounded number of chunks in flight, and yields results
    (in input order, or as they finish).

    Refills happen both when a chunk finishes (collector thread) and when the
    consumer takes results, so a map runs to completion even if nobody reads
    it yet (map_async), while memory stays bounded by the read-ahead.
    """

    TARGET_CHUNK_NS = 5_000_000  # ~5 ms of work per chunk amortises the per-chunk cost
    MAX_CHUNK_NS = 50_000_000  # chunks of a known input's middle, far from its end
    # Chunks and their results stay this far under the size that travels
    # inline in the ring: a spilled payload gets a segment of its own, and
    # both processes fault in every page of it.
    INLINE_SHARE = 0.8
    # Weight kept by the older samples of task time and size at each new chunk.
    DECAY = 0.7

    def __init__(
        self,
        runtime: PoolRuntime,
        fn: Callable[..., Any],
        items: Iterator[Any],
        tag: int,
        chunksize: Optional[int],
        ordered: bool,
        retries: int,
        total: Optional[int],
        bounded: bool,
        freeze: bool = False,
    ) -> None:
        self._runtime = runtime
        self._fn: Task = fn
        self._items = items
        self._tag = tag
        self._fixed_chunk = chunksize
        self._ordered = ordered
        self._retries = retries
        self._remaining = total
        self._cond = threading.Condition()
        self._next_chunk = 0  # index of the next chunk to submit
        self._next_yield = 0  # ordered: index of the next chunk to hand out
        self._finished: dict[int, Chunk] = {}
        # Gathering maps put each chunk's values in place as it finishes (mp.Pool
        # does too): no list of the whole result is built after the last one.
        self._gathered: Optional[list[Any]] = None
        self._gather_failures: dict[int, BaseException] = {}  # by item index
        self._items_read = 0
        self._in_flight: dict[int, int] = {}  # chunk index -> job id (a re-run's, while one runs)
        # The items of the chunks in flight, to re-run those a dead worker did not finish.
        self._chunk_items: dict[int, list[Any]] = {}
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
        self._stalled: Optional[list[Any]] = None  # a chunk read but waiting for room in the arena
        # An array repeated in the items (map(f, [image] * n, ks)) is copied
        # into the arena once for the map, not once per chunk; checked for
        # changes where the input is lazy (a generator may refill a buffer).
        self._memo = BufferMemo(verify=total is None)
        # Items that may change after they were read are frozen as they come
        # (see _read_frozen): the caller's choice, for a lazy input in chunks of ours.
        self._freeze = freeze
        # Chunks read but not packed yet, sent before any more input is read:
        # an item that could not be frozen (alone), the items of a chunk that
        # could not be pickled (each alone, so only the bad ones fail).
        self._queued: deque[list[Any]] = deque()
        self.timeout: Optional[float] = None
        self.on_chunk: Optional[Callable[[int], object]] = None  # items finished, for progress bars
        self.on_complete: Optional[Callable[["MapFeed"], None]] = None  # every chunk finished
        try:
            self._fn = runtime.prepare(fn)
        except Exception as exc:  # noqa: BLE001 - an unpicklable callable fails the map's results
            self._input_error = exc
            self._exhausted = True

    def start(
        self,
        on_chunk: Optional[Callable[[int], object]] = None,
        on_complete: Optional[Callable[[MapFeed], None]] = None,
        gather: bool = False,
    ) -> MapFeed:
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

    def wait_read(self, finished: bool = False) -> None:
        """Waits until every input item is submitted (or the map was closed);
        ``finished``: until every chunk has finished too, re-runs of the items
        a dead worker did not finish included (they need the engine open)."""
        with self._cond:
            while not ((self._all_read() and not (finished and self._in_flight))
                       or self._closed):
                self._cond.wait(0.1)

    def _all_read(self) -> bool:
        """Whether every input item has been read and submitted (or failed)."""
        return self._exhausted and self._stalled is None and not self._queued

    def _report_if_complete(self) -> None:
        with self._cond:
            if self._all_read():
                self._memo.clear()  # every chunk is packed
            if self._completion_reported or not (self._all_read() and not self._in_flight):
                return
            self._completion_reported = True
        self._runtime.forget(self._fn)  # every chunk has finished: nothing runs it any more
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
            per_item_ns = max(self._run_ns, 1.0) / self._run_items
            target_ns = float(self.TARGET_CHUNK_NS)
            if self._remaining is not None:
                # Guided: while much work remains, longer chunks cut what the
                # caller does per chunk (a wake-up, a result to file, a chunk to
                # pack), on CPUs the workers need; they shrink towards the
                # target as the end nears, so no worker idles at the end while
                # another still holds a long chunk.
                guided_ns = per_item_ns * self._remaining / (4 * self._runtime.workers)
                target_ns = min(float(self.MAX_CHUNK_NS), max(target_ns, guided_ns))
            size = int(target_ns / per_item_ns)
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

    def _in_flight_limit(self) -> int:
        if self._run_items or self._fixed_chunk:
            return self._max_in_flight
        # Until a chunk reports how long its items take, one chunk per worker:
        # a map of long tasks would otherwise have cut its whole input into
        # the first, growing chunks (1, 2, 4, ...) before knowing to keep them
        # at one item, and end with one worker holding a long chunk.
        return self._runtime.workers

    def _refill_loop(self) -> None:
        while not self._all_read() and not self._closed and len(self._in_flight) < self._in_flight_limit():
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
                    payload = self._runtime.pack_chunk(chunk, memo=self._memo)
                except MemoryError:
                    if self._in_flight:  # the arena is full of this map's own chunks: wait for one to finish
                        self._stalled = chunk
                        return
                    payload = self._runtime.pack_chunk(chunk, inband=True)  # slower, but it goes
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - an item that cannot be pickled fails
                if len(chunk) > 1:
                    # Each item again on its own, before anything more is read:
                    # only those that cannot be pickled fail, as in the stdlib.
                    self._queued.extendleft([item] for item in reversed(chunk))
                else:
                    self._fail_chunk(chunk, as_pickling_error(exc))
                continue
            index, start = self._file_chunk(chunk)
            if type(payload) is bytes:  # the serial runtime hands over the list itself
                self._note_size(len(payload), len(chunk))
            self._in_flight[index] = 0  # filed first: a serial runtime completes it inside submit()
            self._chunk_items[index] = chunk
            try:
                job_id = self._runtime.submit(
                    self._fn, self._tag, payload, partial(self._done, index, start, len(chunk)),
                    self._retries, self.timeout,
                )
            except MemoryError as exc:  # the arena is full: the map fails at this item
                del self._in_flight[index]
                self._chunk_items.pop(index, None)
                self._input_error = exc
                self._exhausted = True
                self._cond.notify_all()
                return
            except (ValueError, RuntimeError) as exc:  # the pool was shut down under this map
                del self._in_flight[index]
                self._chunk_items.pop(index, None)
                self._input_error = RuntimeError(f"the pool stopped before this map finished: {exc}")
                self._exhausted = True
                self._cond.notify_all()
                return
            if index in self._in_flight:
                self._in_flight[index] = job_id

    def _read_chunk(self) -> list[Any]:
        if self._queued:
            return self._queued.popleft()
        size = self._chunk_size()
        chunk: list[Any] = []
        try:
            if self._freeze:
                self._read_frozen(chunk, size)
            else:
                chunk.extend(islice(self._items, size))  # keeps the items read before a failure
                if len(chunk) < size:
                    self._exhausted = True
        except BaseException as exc:  # noqa: BLE001 - surfaces in the consumer
            self._input_error = exc
            self._exhausted = True
            if self._abandoned:
                log.error("the input of an unread map failed: %r", exc, exc_info=exc)
        return chunk

    def _read_frozen(self, chunk: list[Any], size: int) -> None:
        """Reads up to ``size`` items of a lazy input into ``chunk``, each as
        it was when read, as the stdlib's ``imap`` (chunksize 1) pickles each
        item before reading the next: a generator that refills one buffer or
        yields one dict updated in place must not have its items sent with the
        values of the last one read. An item that cannot be frozen cheaply
        (a big buffer, a container of SharedArrays, cloudpickle's) ends the chunk and goes
        alone as the next one, packed before another item is read (BufferMemo
        compares big buffers with their copies); one that cannot be pickled
        then fails only itself, as in the stdlib."""
        for item in islice(self._items, size):
            if type(item) in SCALAR_TYPES:  # the common case, without a call
                chunk.append(item)
                continue
            frozen = freeze_item(item)
            if frozen is None:
                if chunk:
                    self._queued.append([item])
                else:
                    chunk.append(item)
                return
            chunk.append(frozen)
        if len(chunk) < size:
            self._exhausted = True

    def _file_chunk(self, chunk: list[Any]) -> tuple[int, int]:
        """Numbers a chunk about to be submitted: (chunk index, index of its first item)."""
        index = self._next_chunk
        self._next_chunk += 1
        if self._remaining is not None:
            self._remaining -= len(chunk)
        self._held_items += len(chunk)
        start = self._items_read
        self._items_read += len(chunk)
        return index, start

    def _fail_chunk(self, chunk: list[Any], error: BaseException) -> None:
        """Every item of ``chunk`` fails with ``error`` (as the stdlib fails each
        future whose arguments it could not pickle); the map goes on."""
        index, start = self._file_chunk(chunk)
        count = len(chunk)
        failures = {i: error for i in range(count)}
        if self._abandoned:
            log.error("items of an unread map could not be pickled: %r", error)
        elif self._gathered is not None:
            self._gather(self._gathered, start, [None] * count, failures)
        else:
            self._finished[index] = ([None] * count, failures, count)
        self._cond.notify_all()

    def _done(self, index: int, start: int, count: int, status: int, run_ns: int, payload: Payload) -> None:
        items = self._chunk_items.pop(index, None)
        if status == OK and count:  # every item ran, in run_ns (results sent ahead or not)
            self._run_ns = self.DECAY * self._run_ns + run_ns
            self._run_items = self.DECAY * self._run_items + count
        if type(payload) is tuple and status != INLINE_OK:  # its worker sent results ahead, or died inside it
            self._mended(index, start, _Mending(items, count), 0, count, status, run_ns, payload)
            return
        if status == OK and count:
            self._note_size(len(payload), count)
        values, failures = self._decode_chunk(status, payload, count)  # frees its blocks if dropped
        self._file(index, start, count, values, failures)

    # -- a chunk in parts -------------------------------------------------------
    #
    # A chunk's worker sends its results ahead every millisecond or so, and
    # marks the item it starts. If it dies inside the chunk, the engine ends the
    # job with what arrived and the item it was running (Completion): the items
    # that finished keep their results, the one running fails (WorkerLostError,
    # TimeoutError, MemoryLimitError) unless retries are left for it, and the
    # rest run again, as one re-run job whose outcome is mended in the same way.

    def _mend(
        self, index: int, start: int, mending: _Mending, first: int, count: int, status: int, payload: Payload
    ) -> bool:
        """Takes the outcome of the job that ran items first..first+count-1 of
        a chunk into ``mending``; True if the chunk is whole, False if a re-run
        of some of them was submitted (whose handler goes on with it)."""
        if type(payload) is tuple:
            rest, pieces, failed_item, retries_left = payload
        else:
            rest, pieces, failed_item, retries_left = payload, (), 0, 0
        end = first + count
        at = first
        for piece_status, items, piece in pieces:
            items = min(items, end - at)
            values, failures = self._decode_chunk(piece_status, piece, items)
            mending.put(at, items, values, failures)
            at += items
        if status in (OK, ERROR) or at == end:  # the rest ran to its end
            values, failures = self._decode_chunk(status, rest, end - at)
            mending.put(at, end - at, values, failures)
            return True
        _, error = decode(status, rest)  # why the rest did not finish
        if status == WORKER_LOST and retries_left > 0:  # it may run again, and so may the ones after it
            return self._rerun(index, start, mending, at, end, retries_left - 1, error)
        running = first + failed_item - 1  # (the worker was between items: before `at`, or none)
        if not at <= running < end:
            mending.fail(at, end, error)  # which item is to blame is not known: as for a whole chunk
            return True
        mending.failures[running] = error  # the item that was running is to blame
        return self._rerun(index, start, mending, running + 1, end, self._retries, error)

    def _rerun(
        self, index: int, start: int, mending: _Mending, first: int, end: int, retries: int, error: BaseException
    ) -> bool:
        """Submits items first..end-1 of a chunk again; True (the chunk is
        whole) if there are none, or they cannot run (they fail with ``error``)."""
        if first >= end:
            return True
        with self._cond:
            closed = self._closed
        if closed or mending.items is None:  # the map was closed meanwhile: nobody waits for them
            mending.fail(first, end, error)
            return True
        items = mending.items[first:end]
        try:
            try:
                payload = self._runtime.pack_chunk(items)
            except MemoryError:
                payload = self._runtime.pack_chunk(items, inband=True)
            job_id = self._runtime.submit(
                self._fn, self._tag, payload, partial(self._mended, index, start, mending, first, end - first),
                retries, self.timeout,
            )
        except BaseException as exc:  # noqa: BLE001 - e.g. the pool stopped: they fail, the map goes on
            mending.fail(first, end, RuntimeError(f"{error} (and the items after it could not run again: {exc})"))
            return True
        with self._cond:
            self._in_flight[index] = job_id
        return False

    def _mended(
        self, index: int, start: int, mending: _Mending, first: int, count: int, status: int, run_ns: int,
        payload: Payload,
    ) -> None:
        try:
            whole = self._mend(index, start, mending, first, count, status, payload)
        except BaseException as exc:  # noqa: BLE001 - a chunk never filed would leave its consumer waiting for ever
            mending.fail(first, first + count, transfer_error("the map's results", exc))
            whole = True
        if whole:
            self._file(index, start, len(mending.values), mending.values, mending.failures)

    def _file(self, index: int, start: int, count: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        """A chunk's outcome is complete: to its consumer, or discarded."""
        gathered = self._gathered
        if gathered is not None and not self._abandoned:
            self._gather(gathered, start, values, failures)
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
    def _decode_chunk(status: int, payload: Payload, count: int) -> tuple[list[Any], dict[int, BaseException]]:
        if status == INLINE_OK:
            outcome: tuple[list[Any], dict[int, BaseException]] = payload  # the serial runtime's (results, failures)
            return outcome
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
            return self._all_read() and not self._in_flight

    def _gather(self, gathered: list[Any], start: int, values: list[Any], failures: dict[int, BaseException]) -> None:
        end = start + len(values)
        if end > len(gathered):  # an input of unknown length
            gathered.extend([None] * (end - len(gathered)))
        gathered[start:end] = values  # chunks cover disjoint slices: no lock needed
        for i, exc in failures.items():
            self._gather_failures[start + i] = exc

    def gathered(self) -> tuple[list[Any], dict[int, BaseException]]:
        """A gathering map's results in input order, and its failures by item
        index; raises what the input iterable raised, if it failed."""
        with self._cond:
            if self._input_error is not None:
                raise self._input_error
            gathered = self._gathered
            if gathered is None:
                raise RuntimeError("gathered() of a map started without gather=True")
            return gathered, self._gather_failures

    # -- consuming ------------------------------------------------------------

    def chunks(self, deadline: Optional[float] = None) -> Iterator[Chunk]:
        """Yields (values, failures by index, count) per chunk, ordered or as finished.

        An ordered map waits for its next chunk as a single result is waited
        for (handle.py): this thread takes the chunk's job from the engine and
        files it itself, without a hop through the result thread. Only when the
        result thread has that job already does it sleep until it is filed."""
        taken_elsewhere = 0  # the job the result thread is filing: wait for it, don't ask again
        try:
            while True:
                wait_on = 0
                timeout: Optional[float] = None
                with self._cond:
                    while True:
                        if self._ordered:
                            ready = self._next_yield in self._finished
                            key = self._next_yield
                        else:
                            ready = bool(self._finished)
                            key = next(iter(self._finished)) if ready else 0  # (read only when ready)
                        if ready:
                            break
                        if self._all_read() and not self._in_flight and not self._finished:
                            if self._input_error is not None:
                                raise self._input_error
                            return
                        if deadline is not None:
                            timeout = deadline - time.monotonic()
                            if timeout <= 0:
                                raise TimeoutError("map results did not arrive within the timeout")
                        if self._ordered:
                            wait_on = self._in_flight.get(key, 0)
                            if wait_on and wait_on != taken_elsewhere:
                                break
                            wait_on = 0
                        self._cond.wait(min(timeout, 0.1) if timeout is not None else 0.1)
                    if not wait_on:
                        values, failures, count = self._finished.pop(key)
                        if self._ordered:
                            self._next_yield += 1
                        self._held_items -= count
                        self._refill_locked()
                if wait_on:
                    # Outside the lock: the chunk's handler (_done) takes it.
                    if not self._runtime.take_job(wait_on, timeout):
                        taken_elsewhere = wait_on
                    continue
                yield values, failures, count
        finally:
            if not self._all_read() or self._in_flight:
                self.close()

    def close(self, force: bool = False) -> None:
        """Stops reading input and cancels the chunks no worker took yet
        (``force``: even if the map was abandoned to run to its end)."""
        with self._cond:
            if self._abandoned and not force:
                return
            self._closed = True
            self._memo.clear()
            in_flight = list(self._in_flight.values())
            self._cond.notify_all()
        for job_id in in_flight:
            self._runtime.cancel(job_id)
        done = getattr(self._runtime, "_feed_done", None)
        if done is not None:
            done(self)
