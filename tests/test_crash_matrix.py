"""The crash matrix, after loky's: every failure point a task passes through,
crossed with every kind of failure, on both pool surfaces and every start
method that makes worker processes (forkserver, fork, spawn). For each: no hang, the documented exception, the pool still usable
(or, for the initializer, broken with the initializer's reason), and no
process, file descriptor or shared-memory name left behind.

    point             where it runs    what the caller gets
    pickle_args       caller           the pickler's exception (SystemExit: PicklingError)
    unpickle_args     worker           TransferError (a BrokenProcessPool)
    run               worker           the task's exception
    pickle_result     worker           the pickler's exception / MaybeEncodingError (Pool)
    unpickle_result   caller           TransferError
    initializer       worker           BrokenPoolError; every later task too
    any point, the worker dies (os._exit, SIGSEGV, SIGKILL)    WorkerLostError
    any point in the worker, hang past task_timeout=            TimeoutError
"""
import multiprocessing.pool
import os
import pickle

import pytest

import crash_tasks as ct
import shoal
from conftest import child_pids
from shm_segments import shoal_segments_of

DIES = ("os_exit", "segv", "sigkill")
IN_WORKER = ("unpickle_args", "run", "pickle_result")


def _cases():
    for point in ("pickle_args", "unpickle_args", "run", "pickle_result", "unpickle_result"):
        for kind in ct.KINDS:
            in_caller = point in ("pickle_args", "unpickle_result")
            if in_caller and kind in DIES + ("hang",):
                continue  # the caller's own code killing or blocking the caller
            if point in ("unpickle_args", "unpickle_result") and kind == "unpicklable":
                continue  # these pickle fine by construction
            if point == "unpickle_result" and kind == "hang":
                continue
            yield point, kind


def _call(point, kind):
    """(function, args) that make the fault happen at `point`."""
    if point == "pickle_args":
        return ct.take, (ct.FaultWhenPickled(kind),)
    if point == "unpickle_args":
        return ct.take, (ct.FaultWhenUnpickled(kind),)
    if point == "run":
        return ct.run_fault, (kind,)
    if point == "pickle_result":
        return ct.return_fault_when_pickled, (kind,)
    return ct.return_fault_when_unpickled, (kind,)


def _expected(point, kind, surface):
    if kind in DIES:
        return shoal.WorkerLostError
    if kind == "hang":
        return TimeoutError
    if point in ("unpickle_args", "unpickle_result"):
        return shoal.TransferError
    if point == "pickle_result" and surface == "pool":
        return multiprocessing.pool.MaybeEncodingError
    if point in ("pickle_args", "pickle_result"):
        if kind == "exit":
            return pickle.PicklingError
        return TypeError if kind == "unpicklable" else ValueError
    # run
    return {"exception": ValueError, "unpicklable": shoal.RemoteError, "exit": SystemExit}[kind]


def _open_fds():
    """This process's descriptors (less the one the listing itself used)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module", autouse=True)
def _warm():
    # What a process keeps once it has used a pool at all (its shared-memory
    # owner token) is not a leak of the pool under test.
    with shoal.Executor(1) as ex:
        ex.submit(ct.square, 1).result(timeout=60)


@pytest.fixture(params=["forkserver", "fork", "spawn"])
def start_method(request):
    return request.param


@pytest.fixture(params=["executor", "pool"])
def surface(request):
    return request.param


def _outcome(surface, pool, fn, args, timeout):
    """What the caller's result handle raises (or returns) for fn(*args)."""
    try:
        if surface == "executor":
            return pool.with_options(task_timeout=timeout).submit(fn, *args).result(timeout=120)
        return pool.apply_async(fn, args, task_timeout=timeout).get(timeout=120)
    except BaseException as exc:  # noqa: BLE001 - SystemExit is an outcome here
        return exc


def _make(surface, start_method, **kw):
    if surface == "executor":
        return shoal.Executor(2, start_method=start_method, **kw)
    return shoal.Pool(2, start_method=start_method, **kw)


def _close(surface, pool):
    if surface == "executor":
        pool.shutdown(wait=True)
    else:
        pool.terminate()
        pool.join()


def _check_nothing_left(before_pids, before_fds, before_segments):
    import gc
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gc.collect()
        if set(child_pids()) <= before_pids and shoal_segments_of(os.getpid()) <= before_segments:
            break
        time.sleep(0.05)
    assert set(child_pids()) <= before_pids, "a worker outlived its pool"
    assert shoal_segments_of(os.getpid()) <= before_segments, "a shared-memory name outlived its pool"
    assert _open_fds() <= before_fds, f"descriptors left open: {sorted(_open_fds() - before_fds)}"


@pytest.mark.parametrize("point, kind", list(_cases()))
def test_task_fault(point, kind, surface, start_method):
    before = (set(child_pids()), _open_fds(), shoal_segments_of(os.getpid()))
    fn, args = _call(point, kind)
    pool = _make(surface, start_method)
    got = None
    try:
        timeout = 2.0 if kind == "hang" else None
        got = _outcome(surface, pool, fn, args, timeout)
        assert isinstance(got, _expected(point, kind, surface)), (point, kind, repr(got))
        if kind in DIES:  # stdlib code catches it
            from concurrent.futures.process import BrokenProcessPool

            assert isinstance(got, BrokenProcessPool)
        assert _outcome(surface, pool, ct.square, (7,), None) == 49, "the pool is not usable after the fault"
    finally:
        _close(surface, pool)
        del pool, got  # the pool object (and a traceback naming it) holds its descriptors
    _check_nothing_left(*before)


@pytest.mark.parametrize("kind", [k for k in ct.KINDS if k != "hang"])
def test_initializer_fault(kind, surface, start_method):
    before = (set(child_pids()), _open_fds(), shoal_segments_of(os.getpid()))
    pool = _make(surface, start_method, initializer=ct.run_fault, initargs=(kind,))
    got = None
    try:
        got = _outcome(surface, pool, ct.square, (3,), None)
        if kind == "exit" or kind == "exception" or kind == "unpicklable":
            assert isinstance(got, shoal.BrokenPoolError), repr(got)
        else:  # a worker that dies in its initializer: the pool breaks, or the task's worker is lost
            assert isinstance(got, (shoal.BrokenPoolError, shoal.WorkerLostError)), repr(got)
    finally:
        _close(surface, pool)
        del pool, got  # the pool object (and a traceback naming it) holds its descriptors
    _check_nothing_left(*before)


def _runs(runs_dir):
    return {int(name): len(open(os.path.join(runs_dir, name)).read()) for name in os.listdir(runs_dir)}


def _map_outcomes(surface, pool, fn, items, chunksize, timeout, retries=0):
    """Each item's outcome (value or exception), as a consumer of the map sees it."""
    if surface == "executor":
        it = pool.with_options(task_timeout=timeout, retries=retries).map(fn, items, chunksize=chunksize)
        got = []
        try:
            for value in it:
                got.append(value)
        except BaseException as exc:  # noqa: BLE001 - the stdlib's map ends at its first error
            got.append(exc)
        return got
    it = pool.imap(fn, items, chunksize=chunksize, task_timeout=timeout, retries=retries)
    got = []
    for _ in items:
        try:
            got.append(it.next(timeout=120))
        except BaseException as exc:  # noqa: BLE001 - Pool's imap goes on after an item's error
            got.append(exc)
    return got


@pytest.mark.parametrize("kind", DIES + ("hang",))
def test_fault_inside_a_map_chunk(kind, surface, start_method, tmp_path):
    """A worker dies (or is killed for its time limit) at one item of a map
    chunk: the chunk's finished items keep their results and ran once, the
    error is raised at that item, the items after it still run (once), and
    the pool goes on."""
    from functools import partial

    items, bad, chunksize = list(range(20)), 13, 10
    fn = partial(ct.fault_at_item, bad=bad, kind=kind, runs_dir=str(tmp_path))
    pool = _make(surface, start_method)
    try:
        got = _map_outcomes(surface, pool, fn, items, chunksize, 2.0 if kind == "hang" else None)
        expected = shoal.WorkerLostError if kind in DIES else TimeoutError
        assert got[:bad] == [x * 10 for x in items[:bad]]
        assert isinstance(got[bad], expected), repr(got[bad])
        if surface == "pool":  # its imap goes on past a failed item
            assert got[bad + 1:] == [x * 10 for x in items[bad + 1:]]
        else:
            assert len(got) == bad + 1
            pool.shutdown(wait=True)  # every item of a map runs, read or not
        assert _runs(str(tmp_path)) == {x: 1 for x in items if x != bad}
    finally:
        _close(surface, pool)


@pytest.mark.parametrize("kind", DIES)
def test_death_inside_a_map_chunk_with_retries(kind, surface, start_method, tmp_path):
    """With retries, the item whose worker died runs again and the map
    succeeds; the items that had finished do not run again."""
    from functools import partial

    once = tmp_path / "once"
    once.mkdir()
    runs = tmp_path / "runs"
    runs.mkdir()
    items, bad = list(range(12)), 5
    fn = partial(ct.fault_at_item, bad=bad, kind=kind, runs_dir=str(runs), once_dir=str(once))
    pool = _make(surface, start_method)
    try:
        got = _map_outcomes(surface, pool, fn, items, 12, None, retries=1)
        assert got == [x * 10 for x in items]
        assert _runs(str(runs)) == {x: 1 for x in items}
    finally:
        _close(surface, pool)


@pytest.mark.parametrize("kind", DIES)
def test_death_inside_a_map_chunk_while_the_pool_shuts_down(kind, surface, start_method, tmp_path):
    """The pool is told to finish while a chunk's worker is about to die:
    the items after the dead one still run (once) before it stops."""
    from functools import partial

    items, bad = list(range(20)), 13
    fn = partial(ct.fault_at_item, bad=bad, kind=kind, runs_dir=str(tmp_path))
    pool = _make(surface, start_method)
    try:
        if surface == "executor":
            pool.map(fn, items, chunksize=10)  # never read
            pool.shutdown(wait=True)
        else:
            result = pool.map_async(fn, items, chunksize=10)
            pool.close()
            pool.join()
            with pytest.raises(shoal.WorkerLostError):
                result.get(timeout=60)
        assert _runs(str(tmp_path)) == {x: 1 for x in items if x != bad}
    finally:
        _close(surface, pool)
