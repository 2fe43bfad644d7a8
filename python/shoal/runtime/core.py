"""The one pool core under both surfaces.

``Executor`` and ``Pool`` are thin adapters: they translate the stdlib's
argument names and errors, and hand everything else to a PoolCore, which owns
the pool's options, its runtime (worker processes through the C++ engine, or
the serial debug mode) and its lifecycle:

    running --close()--> closing --join()--> closed
       \\________________terminate()_________/^
    (any state) --the engine gives up--> broken

Only ``running`` takes work. ``closing``: no new work, what was submitted runs
to its end. ``broken``: the engine could not keep workers alive; every new
call raises BrokenPoolError with the engine's reason.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Optional

from ..obs.snapshot import PoolSnapshot
from ..wire.protocol import MAP_ONE, MAP_STAR
from .lifecycle import interpreter_exiting
from .map_feed import MapFeed
from .options import PoolOptions
from .serial import make_runtime

RUNNING, CLOSING, CLOSED = "running", "closing", "closed"  # broken: the runtime says so (check_usable)


class PoolCore:
    """A pool's state and its runtime: what both surfaces share."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        self.runtime = make_runtime(options)
        self._state = RUNNING
        # Held for state changes, and by a submit from its state check to its
        # filing, so that a concurrent close() cannot slip between them.
        self.lock = threading.Lock()
        # The runtime's own method, not a wrapper: a task pays no extra call here.
        self.submit_call = self.runtime.submit_call

    @property
    def workers(self) -> int:
        return self.runtime.workers

    @property
    def closed(self) -> bool:
        """close(), shutdown() or terminate() was called (whether or not the engine broke)."""
        return self._state != RUNNING

    def check_open(self, closed: Callable[[], BaseException]) -> None:
        """Raises ``closed()`` unless the pool takes work (the surface's own
        error), RuntimeError once interpreter shutdown has begun, and
        BrokenPoolError if the engine gave up. Call it with ``lock`` held."""
        if self._state != RUNNING:
            raise closed()
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        self.runtime.check_usable()

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
        on_chunk: Optional[Callable[[int], object]] = None,
        on_complete: Optional[Callable[[MapFeed], None]] = None,
        gather: bool = False,
    ) -> MapFeed:
        """Starts a map. ``bounded``: stop reading input while the consumer is far behind.
        ``timeout``: each task's time limit. ``on_chunk(n)`` runs when n more items
        finished; ``on_complete(feed)`` once all did. ``gather``: the results are
        wanted whole (``feed.gathered()``), not chunk by chunk."""
        # Chunks of our choosing over an input without a length: its items are
        # frozen as they are read (MapFeed._read_frozen), as the stdlib's imap
        # pickles each before reading the next.
        freeze = chunksize is None and timeout is None and total is None
        if chunksize is None:
            # A time limit is per task: one task per job.
            chunksize = 1 if timeout is not None else self.runtime.default_chunksize
        feed = MapFeed(self.runtime, fn, iter(items), MAP_STAR if star else MAP_ONE, chunksize, ordered, retries,
                       total, bounded, freeze)
        feed.timeout = timeout
        return feed.start(on_chunk, on_complete, gather)

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """No new work; workers exit once the submitted work is done."""
        with self.lock:
            if self._state != RUNNING:
                return
            self._state = CLOSING
        self.runtime.shutdown(wait=False)

    def join(self) -> None:
        """Waits until every worker has exited (after close() or terminate())."""
        self.runtime.shutdown(wait=True)
        with self.lock:
            self._state = CLOSED

    def shutdown(self, wait: bool, cancel_pending: bool) -> None:
        """close() and, with ``wait``, join(); ``cancel_pending`` drops what no worker took yet."""
        with self.lock:
            if self._state == RUNNING:
                self._state = CLOSING
        self.runtime.shutdown(wait, cancel_pending)
        if wait:
            with self.lock:
                self._state = CLOSED

    def terminate(self) -> None:
        """Stops the workers now; unfinished work is cancelled."""
        with self.lock:
            self._state = CLOSED
        self.runtime.terminate()

    # -- insight ----------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return self.runtime.worker_pids()

    def stats(self) -> PoolSnapshot:
        return self.runtime.stats()
