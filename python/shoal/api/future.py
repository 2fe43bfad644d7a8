"""The Future that ``Executor.submit`` returns: a ``concurrent.futures.Future``
that is cheap to create, cancels queued jobs, and waits for its result by
taking it straight from the workers."""
from __future__ import annotations

from _thread import LockType, RLock, allocate_lock
from concurrent import futures
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ..runtime.outcome import Cancelled, Payload, decode
from ..wire.pickling import PICKLE_PROTOCOL_5, loads
from ..wire.protocol import OK
from ..runtime.handle import JobHandle

if TYPE_CHECKING:
    from ..runtime.interface import PoolRuntime

_T = TypeVar("_T")


class _Condition(RLock):  # type: ignore[misc]  # final in typeshed; a subclass at run time, as threading's own
    """What ``concurrent.futures`` needs of a Future's condition variable:
    an RLock (``with``, ``acquire``/``release``) with ``wait`` and ``notify_all``.

    ``threading.Condition`` allocates a dozen objects per instance (bound
    methods, a deque) and enters in Python code, which made creating and
    completing a Future cost more than sending its task.
    """

    # Made by the first wait(): most futures never see one. A class default,
    # not an __init__: a Python-level __init__ would run for every future.
    _sleepers: Optional[list[LockType]] = None

    def wait(self, timeout: Optional[float] = None) -> bool:
        # As threading.Condition.wait: sleep on a fresh lock that notify releases.
        sleeper = allocate_lock()
        sleeper.acquire()
        if self._sleepers is None:
            self._sleepers = []
        self._sleepers.append(sleeper)
        saved = self._release_save()  # type: ignore[attr-defined]
        woken = False
        try:
            if timeout is None:
                woken = sleeper.acquire()
            else:
                woken = sleeper.acquire(True, timeout) if timeout > 0 else sleeper.acquire(False)
            return woken
        finally:
            self._acquire_restore(saved)  # type: ignore[attr-defined]
            if not woken and self._sleepers is not None:
                try:
                    self._sleepers.remove(sleeper)
                except ValueError:
                    pass

    def notify_all(self) -> None:
        sleepers, self._sleepers = self._sleepers, None
        if sleepers:
            for sleeper in sleepers:
                sleeper.release()


class Future(futures.Future[_T], JobHandle):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also removes the
    queued job and whose ``result()`` takes the result from the workers in the
    waiting thread (no hop through the pool's result thread)."""

    _result: Any  # the value, once FINISHED without an exception

    def __init__(self, runtime: PoolRuntime) -> None:
        # What futures.Future.__init__ sets, with the lighter condition.
        self._condition = _Condition()  # type: ignore[assignment]
        self._state = PENDING
        self._result = None
        self._exception = None
        self._runtime = runtime

    def __call__(self, status: int, run_ns: int, payload: Payload) -> None:
        """Delivers the job's outcome: the future is the job's result handler."""
        if status == OK and payload.startswith(PICKLE_PROTOCOL_5):
            try:  # a plain pickled value, the common case: without decode()'s calls
                ok, value = True, loads(payload)
            except BaseException:  # noqa: BLE001 - decode() says what went wrong (SystemExit included)
                ok, value = decode(status, payload)
        else:
            ok, value = decode(status, payload)
        try:
            if ok:
                self._set_result_quickly(value)
            elif isinstance(value, Cancelled):  # shutdown(cancel_futures=True) dropped it
                if futures.Future.cancel(self):
                    self.set_running_or_notify_cancel()
            else:
                self.set_exception(value)
        except futures.InvalidStateError:
            pass  # cancelled by its owner in the meantime

    # The base class's two lists, made on first use: most futures never get a
    # waiter or a callback before they finish, and every list is one more
    # object for the garbage collector to walk on each full collection.
    _waiter_list: Optional[list[Any]] = None  # concurrent.futures' _Waiter objects
    _callback_list: Optional[list[Callable[[futures.Future[_T]], object]]] = None

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]  # an attribute in typeshed
        waiters = self._waiter_list
        if waiters is None:
            waiters = self._waiter_list = []
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[futures.Future[_T]], object]]:
        callbacks = self._callback_list
        if callbacks is None:
            callbacks = self._callback_list = []
        return callbacks

    def _set_result_quickly(self, value: Any) -> None:
        """``set_result(value)`` as the base class does it, minus the calls
        that would find nothing to do (no waiter, no sleeper, no callback):
        the result thread runs this once per task, holding the GIL."""
        with self._condition:
            if self._state != PENDING and self._state != RUNNING:
                raise futures.InvalidStateError(f"{self._state}: {self!r}")
            self._result = value
            self._state = FINISHED
            if self._waiter_list:  # as_completed(), wait()
                for waiter in self._waiter_list:
                    waiter.add_result(self)
            if self._condition._sleepers:  # type: ignore[attr-defined]  # our _Condition's
                self._condition.notify_all()
        if self._callback_list:
            self._invoke_callbacks()  # type: ignore[attr-defined]  # the base class's, private: not in typeshed

    def result(self, timeout: Optional[float] = None) -> _T:
        if self._state == FINISHED and self._exception is None:
            # Done (a terminal state, set after the result under the lock):
            # what the base class would return, without its lock and calls,
            # for the many futures that as_completed() hands over done.
            result: _T = self._result
            return result
        if self._state == PENDING or self._state == RUNNING:
            timeout = self._take_result(timeout)  # in this thread, straight from the engine
        return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if self._state == PENDING or self._state == RUNNING:
            timeout = self._take_result(timeout)
        return super().exception(timeout)

    def running(self) -> bool:
        """True while a worker holds the task (it left the queue, as the
        stdlib's future turns running when it is handed to a worker)."""
        if self._state == PENDING and self._job_id and not self._runtime.queued(self._job_id):
            with self._condition:
                if self._state == PENDING:
                    self._state = RUNNING
        return self._state == RUNNING

    def cancel(self) -> bool:
        with self._condition:
            if self._state == CANCELLED or self._state == CANCELLED_AND_NOTIFIED:
                return True  # as the base class: cancelling twice is no error
            if self._state == PENDING and not self._runtime.cancel(self._job_id):
                # A worker already holds it: it counts as running now.
                self._state = RUNNING
                return False
            if not super().cancel():
                return False
        self.set_running_or_notify_cancel()  # wakes wait() and as_completed()
        return True
