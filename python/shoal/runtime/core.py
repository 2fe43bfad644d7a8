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
from typing import Callable, Optional

from ..errors import BrokenPoolError
from .lifecycle import interpreter_exiting
from .options import PoolOptions
from .serial import make_runtime

RUNNING, CLOSING, CLOSED, BROKEN = "running", "closing", "closed", "broken"


class PoolCore:
    """A pool's state and its runtime: what both surfaces share."""

    def __init__(self, options: PoolOptions) -> None:
        self.options = options
        self.runtime = make_runtime(options)
        self._state = RUNNING
        self._lock = threading.Lock()  # state changes; submits check under it
        # The runtime's own methods, not wrappers: a task pays no extra call here.
        self.submit_call = self.runtime.submit_call
        self.map = self.runtime.map

    @property
    def workers(self) -> int:
        return self.runtime.workers

    @property
    def state(self) -> str:
        if self._state == RUNNING and self.broken_reason() is not None:
            return BROKEN
        return self._state

    @property
    def closed(self) -> bool:
        """close(), shutdown() or terminate() was called (whether or not the engine broke)."""
        return self._state != RUNNING

    def broken_reason(self) -> Optional[str]:
        try:
            self.runtime.check_usable()
        except BrokenPoolError as exc:
            return str(exc)
        return None

    def check_open(self, closed: Callable[[], BaseException]) -> None:
        """Raises ``closed()`` unless the pool takes work (the surface's own
        error), RuntimeError once interpreter shutdown has begun, and
        BrokenPoolError if the engine gave up. Call it with ``lock`` held."""
        if self._state != RUNNING:
            raise closed()
        if interpreter_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        self.runtime.check_usable()

    @property
    def lock(self) -> threading.Lock:
        """Held by a submit from its state check to its filing, so that a
        concurrent close() cannot slip between them."""
        return self._lock

    # -- lifecycle --------------------------------------------------------------

    def close(self) -> None:
        """No new work; workers exit once the submitted work is done."""
        with self._lock:
            if self._state != RUNNING:
                return
            self._state = CLOSING
        self.runtime.shutdown(wait=False)

    def join(self) -> None:
        """Waits until every worker has exited (after close() or terminate())."""
        self.runtime.shutdown(wait=True)
        with self._lock:
            self._state = CLOSED

    def shutdown(self, wait: bool, cancel_pending: bool) -> None:
        """close() and, with ``wait``, join(); ``cancel_pending`` drops what no worker took yet."""
        with self._lock:
            if self._state == RUNNING:
                self._state = CLOSING
        self.runtime.shutdown(wait, cancel_pending)
        if wait:
            with self._lock:
                self._state = CLOSED

    def terminate(self) -> None:
        """Stops the workers now; unfinished work is cancelled."""
        with self._lock:
            self._state = CLOSED
        self.runtime.terminate()

    # -- insight ----------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        return self.runtime.worker_pids()

    def stats(self) -> dict[str, int]:
        return self.runtime.stats()
