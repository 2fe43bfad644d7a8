"""Process-shared synchronization primitives that live in shared memory.

Drop-in counterparts of :mod:`multiprocessing`'s ``Lock``, ``RLock``,
``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Condition`` and ``Barrier``,
with the same method signatures and semantics, plus:

* **Robust locks.** If a process (or thread) dies while holding a ``Lock`` or
  ``RLock``, the next ``acquire`` succeeds instead of hanging forever. It emits
  an :class:`OwnerDiedWarning` and sets the object's ``previous_owner_died``
  attribute, because whatever the lock protected may be half-updated.
* **Pass them anywhere.** Every object pickles *by name*: passing one to a
  child process (``multiprocessing`` with any start method, a ``shoal`` pool,
  ``pickle.dumps`` to any process that imports ``shoal``) attaches the child to
  the very same object. ``multiprocessing`` instead refuses to pickle its locks
  outside of process creation.
* **Timeouts** everywhere: ``None`` waits forever, a negative timeout counts as
  zero, and every wait can be interrupted with Ctrl-C.

Ownership of the name: each object's state lives in a shared-memory segment
(``/dev/shm/shoal-<pid>-<random>``) created by the process that constructed the
object. That process owns the name and unlinks it when its object is garbage
collected. Processes that already attached keep working; processes that try to
attach afterwards (for example by unpickling) get ``FileNotFoundError``. So keep
the creating object alive for as long as other processes may still attach.

Differences from ``multiprocessing`` worth knowing:

* A ``Lock`` is owned by the thread that acquired it (the robust mutex
  underneath needs an owner to detect its death). Releasing it from another
  thread or process, or releasing it when it is not held, raises
  :class:`LockNotOwnedError`, which is both a ``RuntimeError`` (what
  ``threading`` raises) and a ``ValueError`` (what ``multiprocessing.Lock``
  raises for a release of an unlocked lock), so either ``except`` clause works.
  ``multiprocessing.Lock`` lets any process release it.
* A blocking ``Lock.acquire()`` with no timeout by the thread that already holds
  it raises ``RuntimeError`` instead of deadlocking forever; with a timeout it
  waits the timeout out and returns ``False``, like ``multiprocessing.Lock``.
* ``Condition.wait`` may wake spuriously (``notify(n)`` can wake more than
  ``n`` waiters). Re-check your predicate in a loop, or use ``wait_for``.
* ``Event.wait`` returns ``True`` if the event was set at any moment during the
  wait, even if it was cleared again before the waiter ran (as
  ``threading.Event`` does).
* ``Barrier(parties)`` requires ``parties >= 1``. A party process that dies
  while waiting at a barrier is not noticed; give ``wait`` a timeout. A process
  that dies while holding the barrier's internal lock breaks the barrier.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from .. import _core

__all__ = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "OwnerDiedWarning",
    "LockNotOwnedError",
    "BrokenBarrierError",
]

#: Warning emitted when a lock is acquired after its previous holder died holding it.
OwnerDiedWarning = _core.OwnerDiedWarning
#: Raised by releasing (or waiting on / notifying through) a lock this thread does not hold.
LockNotOwnedError = _core.LockNotOwnedError
#: The very same class as :class:`threading.BrokenBarrierError`.
BrokenBarrierError = threading.BrokenBarrierError

_T = TypeVar("_T")


def _owner_tag(lock: _core._Lock) -> str:
    if lock._is_owned():
        return "held by this thread"
    return "locked" if lock._locked else "unlocked"


class Lock(_core._Lock):
    """A robust, non-recursive lock shared between processes.

    Same interface as :class:`multiprocessing.Lock`: ``acquire(block=True,
    timeout=None) -> bool``, ``release()`` and use as a context manager. If the
    holder died while holding it, the next acquire succeeds, warns with
    :class:`OwnerDiedWarning` and sets :attr:`previous_owner_died`.
    """

    _recursive = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # CPython specializes C method calls only for the exact class that defines
        # them, so every subclass gets its own copy of the fast acquire/release.
        _core._Lock._add_fast_methods(cls)

    if TYPE_CHECKING:
        #: Name of the shared-memory segment holding the lock (what pickling sends).
        name: str
        #: True if the latest acquire through this object recovered from a dead holder.
        previous_owner_died: bool

        def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
            """Acquire the lock; ``False`` if non-blocking or timed out without it."""

        def release(self) -> None:
            """Release the lock; :class:`LockNotOwnedError` if this thread does not hold it."""

        def __enter__(self) -> bool: ...

        def __exit__(self, *exc_info: object) -> None: ...

    def __init__(self) -> None:
        super().__init__(self._recursive)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_lock, (type(self), self.name))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r} ({_owner_tag(self)})>"


class RLock(Lock):
    """A robust, recursive lock shared between processes.

    Same interface as :class:`multiprocessing.RLock`: the holding thread may
    acquire it again and must release it as many times. ``release()`` by a
    thread that does not hold it raises ``RuntimeError("cannot release
    un-acquired lock")`` (a :class:`LockNotOwnedError`). Robust like :class:`Lock`.
    """

    _recursive = True

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r} ({_owner_tag(self)}, depth {self._depth})>"


_core._Lock._add_fast_methods(Lock)


def _attach_lock(cls: type[Lock], name: str) -> Lock:
    obj = cls.__new__(cls)
    _core._Lock.__init__(obj, cls._recursive, name)
    return obj


class Semaphore(_core._Semaphore):
    """A counting semaphore shared between processes.

    Same interface as :class:`multiprocessing.Semaphore`: ``acquire(block=True,
    timeout=None) -> bool``, ``release()``, ``get_value()`` and use as a context
    manager. Any thread or process may release it.
    """

    _bounded = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _core._Semaphore._add_fast_methods(cls)  # see Lock.__init_subclass__

    if TYPE_CHECKING:
        name: str

        def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
            """Decrement the counter, waiting while it is zero; ``False`` if not done in time."""

        def release(self) -> None:
            """Increment the counter, waking one waiter."""

        def get_value(self) -> int:
            """The counter's current value."""

        def __enter__(self) -> bool: ...

        def __exit__(self, *exc_info: object) -> None: ...

    def __init__(self, value: int = 1) -> None:
        super().__init__(value, self._bounded)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_semaphore, (type(self), self.name))

    def __repr__(self) -> str:
        extra = f", maxvalue={self._bound}" if self._bounded else ""
        return f"<{type(self).__qualname__} {self.name!r} (value={self.get_value()}{extra})>"


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release()`` raises ``ValueError`` past its initial value.

    Same interface as :class:`multiprocessing.BoundedSemaphore`.
    """

    _bounded = True


_core._Semaphore._add_fast_methods(Semaphore)


def _attach_semaphore(cls: type[Semaphore], name: str) -> Semaphore:
    obj = cls.__new__(cls)
    _core._Semaphore.__init__(obj, 0, cls._bounded, name)
    return obj


class Event(_core._Event):
    """An event flag shared between processes.

    Same interface as :class:`multiprocessing.Event`: ``is_set()``, ``set()``,
    ``clear()`` and ``wait(timeout=None) -> bool``.
    """

    if TYPE_CHECKING:
        name: str

        def is_set(self) -> bool: ...

        def set(self) -> None:
            """Set the flag, waking every waiter."""

        def clear(self) -> None: ...

        def wait(self, timeout: Optional[float] = None) -> bool:
            """Block until the flag is set; ``False`` if the timeout passed first."""

    def __init__(self) -> None:
        super().__init__()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_event, (type(self), self.name))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r} ({'set' if self.is_set() else 'unset'})>"


def _attach_event(cls: type[Event], name: str) -> Event:
    obj = cls.__new__(cls)
    _core._Event.__init__(obj, name)
    return obj


class Condition(_core._Condition):
    """A condition variable shared between processes.

    Same interface as :class:`multiprocessing.Condition`: ``Condition(lock=None)``
    (a new :class:`RLock` by default, else a shoal :class:`Lock` or
    :class:`RLock`), ``acquire``/``release``/context manager (those of the
    lock), ``wait(timeout=None) -> bool``, ``wait_for(predicate, timeout=None)``,
    ``notify(n=1)`` and ``notify_all()``.

    ``wait`` releases the lock completely (an RLock held several levels deep is
    restored to the same depth afterwards). Spurious wakeups can happen: call
    ``wait`` in a loop that re-checks the condition, or use ``wait_for``.
    """

    if TYPE_CHECKING:
        name: str

        def wait(self, timeout: Optional[float] = None) -> bool:
            """Release the lock, wait for a notify or the timeout, take the lock back.

            Returns ``False`` if the timeout passed first.
            """

        def notify(self, n: int = 1) -> None:
            """Wake up to ``n`` waiters (at least that many, if they are waiting)."""

        def notify_all(self) -> None:
            """Wake every waiter."""

    def __init__(self, lock: Optional[Union[Lock, RLock]] = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, _core._Lock):
            raise TypeError(f"Condition needs a shoal.sync Lock or RLock, not {type(lock).__name__}")
        super().__init__(lock)
        self._adopt(lock)

    def _adopt(self, lock: Lock) -> None:
        self._lock = lock
        # Bound methods of the lock itself, as threading.Condition does: no extra frame.
        self.acquire = lock.acquire
        self.release = lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()

    def _is_owned(self) -> bool:
        return self._lock._is_owned()

    def wait_for(self, predicate: Callable[[], _T], timeout: Optional[float] = None) -> _T:
        """Wait until ``predicate()`` is true (or the timeout passes); return its last value."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_condition, (type(self), self.name, self._lock))

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r} over {self._lock!r}>"


def _attach_condition(cls: type[Condition], name: str, lock: Lock) -> Condition:
    obj = cls.__new__(cls)
    _core._Condition.__init__(obj, lock, name)
    obj._adopt(lock)
    return obj


class Barrier(_core._Barrier):
    """A reusable barrier shared between processes.

    Same interface as :class:`multiprocessing.Barrier` / :class:`threading.Barrier`:
    ``Barrier(parties, action=None, timeout=None)``; ``wait(timeout=None)``
    returns an index in ``range(parties)``, unique within each generation; the
    ``action`` runs in exactly one of the waiting processes before any is
    released; a timeout, a failing action or ``abort()`` breaks the barrier and
    raises :class:`threading.BrokenBarrierError` in every waiter until
    ``reset()``. Properties: ``parties``, ``n_waiting``, ``broken``.

    The action and the default timeout travel with the object when it is
    pickled, so the action must be picklable (a module-level function).
    """

    if TYPE_CHECKING:
        name: str
        parties: int
        n_waiting: int
        broken: bool

        def reset(self) -> None:
            """Return to the empty state; current waiters get BrokenBarrierError."""

        def abort(self) -> None:
            """Break the barrier: current and future waiters get BrokenBarrierError."""

    def __init__(
        self, parties: int, action: Optional[Callable[[], object]] = None, timeout: Optional[float] = None
    ) -> None:
        super().__init__(parties)
        self._action = action
        self._timeout = timeout

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for all parties; return this caller's arrival index.

        ``timeout`` defaults to the one given to the constructor. Raises
        :class:`threading.BrokenBarrierError` if the barrier is or gets broken.
        """
        if timeout is None:
            timeout = self._timeout
        return self._wait(timeout, self._action)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_attach_barrier, (type(self), self.name, self._action, self._timeout))

    def __repr__(self) -> str:
        state = "broken" if self.broken else f"waiters={self.n_waiting}/{self.parties}"
        return f"<{type(self).__qualname__} {self.name!r} ({state})>"


def _attach_barrier(
    cls: type[Barrier], name: str, action: Optional[Callable[[], object]], timeout: Optional[float]
) -> Barrier:
    obj = cls.__new__(cls)
    _core._Barrier.__init__(obj, 0, name)
    obj._action = action
    obj._timeout = timeout
    return obj
