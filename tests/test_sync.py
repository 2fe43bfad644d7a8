"""shoal.shm.sync primitives, shared with processes started by multiprocessing's spawn.

Every wait has a timeout, so a broken primitive fails a test instead of hanging it.
Child functions are module-level so that spawned processes can import them.
"""
import gc
import os
import pickle
import signal
import threading
import time
import warnings
import multiprocessing as mp

import pytest

from shoal.shm.sync import (
    Barrier,
    BoundedSemaphore,
    BrokenBarrierError,
    Condition,
    Event,
    Lock,
    LockNotOwnedError,
    OwnerDiedWarning,
    RLock,
    Semaphore,
)
from shm_segments import shoal_segments_of

ctx = mp.get_context("spawn")
JOIN = 30  # seconds: generous, only reached when something is broken


def run_children(target, *arg_lists):
    """Starts one spawned child per argument tuple; returns them started."""
    procs = [ctx.Process(target=target, args=args) for args in arg_lists]
    for p in procs:
        p.start()
    return procs


def join_all(procs):
    for p in procs:
        p.join(JOIN)
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


def eventually(ready, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# ---------------------------------------------------------------- child functions


def _add_under_lock(lock, counter, times):
    for _ in range(times):
        with lock:
            value = counter.value  # a read-modify-write that only the lock makes safe
            time.sleep(0)
            counter.value = value + 1


def _try_lock_briefly(lock):
    deadline = time.monotonic() + 0.05
    got = lock.acquire(timeout=0.05)
    waited_it_out = time.monotonic() >= deadline  # gave up at its timeout, not before
    nonblocking = lock.acquire(False)
    raise SystemExit(0 if (not got and waited_it_out and not nonblocking) else 1)


def _acquire_and_die(lock):
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def _release_n(sem, n):
    for _ in range(n):
        sem.release()


def _wait_for_event(event, reply):
    if not event.wait(JOIN):
        raise SystemExit(1)
    reply.set()


def _wait_for_flag(cond, flag, waiting):
    with cond:
        waiting.value = 1  # under the lock: once the parent holds it, this child is in wait_for
        ok = cond.wait_for(lambda: flag.value == 1, timeout=JOIN)
        held = cond._is_owned()
    raise SystemExit(0 if ok and held else 1)


def _count_action(counter):
    counter.value += 1


def _meet(barrier, generations, results):
    results.put([barrier.wait() for _ in range(generations)])


def _expect_broken(barrier):
    try:
        barrier.wait(JOIN)
    except BrokenBarrierError:
        raise SystemExit(0)
    raise SystemExit(1)


class _ActionCounter:
    """A picklable barrier action that counts in shared memory."""

    def __init__(self, counter):
        self.counter = counter

    def __call__(self):
        _count_action(self.counter)


# ---------------------------------------------------------------- Lock / RLock


def test_lock_gives_mutual_exclusion_across_processes():
    lock = Lock()
    counter = ctx.RawValue("i", 0)
    procs = run_children(_add_under_lock, (lock, counter, 200), (lock, counter, 200))
    _add_under_lock(lock, counter, 200)
    assert join_all(procs) == [0, 0]
    assert counter.value == 600


def test_lock_timeouts_return_false():
    lock = Lock()
    assert lock.acquire()
    assert join_all(run_children(_try_lock_briefly, (lock,))) == [0]
    # The holder itself: non-blocking and timed attempts fail, as with multiprocessing.Lock.
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.02) is False
    assert lock.acquire(True, -1) is False  # negative timeout counts as zero
    with pytest.raises(RuntimeError, match="already holds"):
        lock.acquire()  # would wait forever: refused instead
    lock.release()
    assert lock.acquire(timeout=0)
    lock.release()


def test_release_of_unheld_lock_raises_value_and_runtime_error():
    lock = Lock()
    with pytest.raises(ValueError):
        lock.release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        lock.release()
    lock.acquire()
    other = []
    t = threading.Thread(target=lambda: other.append(_raises(lock.release, LockNotOwnedError)))
    t.start()
    t.join(JOIN)
    assert other == [True]  # a lock belongs to the thread that acquired it
    lock.release()


def _raises(fn, exc):
    try:
        fn()
    except exc:
        return True
    return False


def test_rlock_recursion():
    rlock = RLock()
    for _ in range(3):
        assert rlock.acquire()
    assert join_all(run_children(_try_lock_briefly, (rlock,))) == [0]
    for _ in range(3):
        rlock.release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        rlock.release()
    with rlock:
        with rlock:
            assert rlock._is_owned()
    assert not rlock._is_owned()


@pytest.mark.parametrize("kind", [Lock, RLock])
def test_lock_of_killed_holder_is_recovered_with_a_warning(kind):
    lock = kind()
    (child,) = run_children(_acquire_and_die, (lock,))
    child.join(JOIN)
    assert child.exitcode == -signal.SIGKILL
    with pytest.warns(OwnerDiedWarning, match="died"):
        assert lock.acquire(timeout=JOIN)
    assert lock.previous_owner_died is True
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lock:  # consistent again: no warning the second time
            assert lock.previous_owner_died is False


def test_owner_died_warning_turned_error_leaves_lock_free():
    lock = Lock()
    (child,) = run_children(_acquire_and_die, (lock,))
    child.join(JOIN)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OwnerDiedWarning)
        with pytest.raises(OwnerDiedWarning):
            lock.acquire(timeout=JOIN)
    assert not lock._is_owned()
    assert lock.acquire(False)
    lock.release()


def test_blocked_acquire_is_interruptible():
    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted

    sem = Semaphore(0)
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        deadline = time.monotonic() + JOIN
        with pytest.raises(Interrupted):
            sem.acquire(timeout=JOIN)
        assert time.monotonic() < deadline  # the signal ended the wait, not its timeout
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- Semaphore


def test_semaphore_counts_releases_from_another_process():
    sem = Semaphore(0)
    assert sem.acquire(timeout=0.02) is False
    procs = run_children(_release_n, (sem, 5))
    for _ in range(5):
        assert sem.acquire(timeout=JOIN)
    assert join_all(procs) == [0]
    assert sem.acquire(block=False) is False
    assert sem.get_value() == 0
    with pytest.raises(ValueError):
        Semaphore(-1)


def test_bounded_semaphore_refuses_release_past_its_value():
    sem = BoundedSemaphore(2)
    with pytest.raises(ValueError, match="released too many times"):
        sem.release()
    with sem:
        assert sem.get_value() == 1
    assert sem.get_value() == 2
    plain = Semaphore(1)
    plain.release()
    assert plain.get_value() == 2


# ---------------------------------------------------------------- Event


def test_event_wakes_a_waiter_in_another_process():
    event, reply = Event(), Event()
    procs = run_children(_wait_for_event, (event, reply))
    assert event.wait(0.02) is False
    event.set()
    assert reply.wait(JOIN)
    assert join_all(procs) == [0]
    assert event.is_set()
    event.clear()
    assert not event.is_set()
    assert event.wait(timeout=-1) is False


# ---------------------------------------------------------------- Condition


def test_condition_notify_wakes_a_waiter_in_another_process():
    cond = Condition()
    flag, waiting = ctx.RawValue("i", 0), ctx.RawValue("i", 0)
    procs = run_children(_wait_for_flag, (cond, flag, waiting))
    assert eventually(lambda: waiting.value == 1, timeout=JOIN)
    with cond:  # the child released the lock: it waits for the notify
        flag.value = 1
        cond.notify()
    assert join_all(procs) == [0]


def test_condition_wait_times_out_and_restores_rlock_depth():
    cond = Condition(RLock())
    with pytest.raises(RuntimeError):
        cond.wait(0.01)  # not holding the lock
    with pytest.raises(RuntimeError):
        cond.notify()
    with cond:
        with cond:
            deadline = time.monotonic() + 0.03
            assert cond.wait(0.03) is False
            assert time.monotonic() >= deadline  # it waited out its timeout, not less
            assert cond._lock._depth == 2
        assert cond.wait_for(lambda: False, timeout=0.02) is False
    assert not cond._is_owned()


def test_condition_over_a_plain_lock_and_wrong_lock_type():
    cond = Condition(Lock())
    with cond:
        cond.notify_all()
        assert cond.wait(0) is False
    with pytest.raises(TypeError):
        Condition(threading.Lock())


# ---------------------------------------------------------------- Barrier


def test_barrier_across_processes_over_several_generations():
    actions = ctx.RawValue("i", 0)
    barrier = Barrier(3, action=_ActionCounter(actions), timeout=JOIN)
    results = ctx.Queue()
    generations = 4
    procs = run_children(_meet, (barrier, generations, results), (barrier, generations, results))
    mine = [barrier.wait() for _ in range(generations)]
    theirs = [results.get(timeout=JOIN) for _ in procs]
    assert join_all(procs) == [0, 0]
    for g in range(generations):
        assert sorted([mine[g]] + [t[g] for t in theirs]) == [0, 1, 2]
    assert actions.value == generations
    assert barrier.n_waiting == 0 and not barrier.broken and barrier.parties == 3


def test_barrier_timeout_breaks_it_for_every_waiter():
    barrier = Barrier(3)
    procs = run_children(_expect_broken, (barrier,))
    assert eventually(lambda: barrier.n_waiting == 1)
    with pytest.raises(BrokenBarrierError):
        barrier.wait(timeout=0.05)
    assert join_all(procs) == [0]
    assert barrier.broken
    with pytest.raises(BrokenBarrierError):
        barrier.wait(timeout=JOIN)
    barrier.reset()
    assert not barrier.broken
    barrier.abort()
    assert barrier.broken


def test_barrier_action_error_breaks_it_and_reaches_the_caller():
    def failing():
        raise KeyError("action")

    barrier = Barrier(1, action=failing)
    with pytest.raises(KeyError):
        barrier.wait()
    assert barrier.broken
    with pytest.raises(ValueError):
        Barrier(0)


def test_barrier_with_threads_of_one_process():
    barrier = Barrier(4, timeout=JOIN)
    indices = []
    threads = [threading.Thread(target=lambda: indices.append(barrier.wait())) for _ in range(3)]
    for t in threads:
        t.start()
    indices.append(barrier.wait())
    for t in threads:
        t.join(JOIN)
    assert sorted(indices) == [0, 1, 2, 3]


# ---------------------------------------------------------------- pickling and names


def test_pickling_attaches_to_the_same_object():
    lock = Lock()
    copy = pickle.loads(pickle.dumps(lock))
    assert type(copy) is Lock and copy.name == lock.name
    with copy:
        assert lock._locked
    assert type(pickle.loads(pickle.dumps(RLock()))) is RLock

    sem = BoundedSemaphore(3)
    sem_copy = pickle.loads(pickle.dumps(sem))
    assert type(sem_copy) is BoundedSemaphore
    sem_copy.acquire()
    assert sem.get_value() == 2
    sem.release()
    with pytest.raises(ValueError):
        sem_copy.release()

    event = Event()
    pickle.loads(pickle.dumps(event)).set()
    assert event.is_set()

    cond = Condition()
    cond_copy = pickle.loads(pickle.dumps(cond))
    assert cond_copy.name == cond.name and cond_copy._lock.name == cond._lock.name

    barrier = Barrier(2, timeout=5)
    barrier_copy = pickle.loads(pickle.dumps(barrier))
    assert barrier_copy.parties == 2 and barrier_copy._timeout == 5
    barrier_copy.abort()
    assert barrier.broken


def test_attaching_needs_the_creator_alive_and_the_right_kind():
    lock = Lock()
    data = pickle.dumps(lock)
    del lock
    gc.collect()
    with pytest.raises(FileNotFoundError):
        pickle.loads(data)
    from shoal.shm.sync import _attach_lock

    sem = Semaphore()
    with pytest.raises(ValueError, match="does not hold a shoal Lock"):
        _attach_lock(Lock, sem.name)
    rlock = RLock()
    with pytest.raises(ValueError, match="RLock, not a Lock"):
        _attach_lock(Lock, rlock.name)


def test_no_shared_memory_left_behind():
    before = shoal_segments_of()
    objs = [Lock(), RLock(), Semaphore(2), BoundedSemaphore(), Event(), Condition(), Condition(Lock()), Barrier(2)]
    copies = [pickle.loads(pickle.dumps(o)) for o in objs]
    assert len(shoal_segments_of() - before) == 10  # a default Condition brings its own RLock
    del objs, copies
    gc.collect()
    assert shoal_segments_of() - before == set()
