"""shoal as a drop-in: what a ProcessPoolExecutor or multiprocessing.Pool user
sees must not differ (results, exceptions, lifetimes), only be faster and
survive crashes. Each test states the stdlib behaviour it checks."""
import concurrent.futures as cf
import functools
import multiprocessing
import multiprocessing.pool
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import shoal
import tasks

START_METHODS = ["forkserver", "spawn", "fork"]
TESTS = os.path.dirname(__file__)


def _python(*args, cwd=None, extra_path=(), timeout=120, text=True):
    """Runs ``python *args`` with this test's sys.path (a user's script, as they run it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*extra_path, *sys.path]))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=text, timeout=timeout, cwd=cwd)


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


def _executor(start_method):
    return shoal.Executor(2, start_method=start_method)


# --- stale callables ------------------------------------------------------------


def test_changed_bound_method_partial_and_closure_run_with_their_new_state(start_method, no_leaks):
    model = tasks.Scaler(1)
    factor = [2]
    partial = functools.partial(tasks.scale_by, factor)
    with _executor(start_method) as ex:
        assert ex.submit(model.predict, 2).result(timeout=60) == 2
        assert ex.submit(partial, 2).result(timeout=60) == 4
        model.w = 10
        factor[0] = 7
        assert ex.submit(model.predict, 2).result(timeout=60) == 20
        assert list(ex.map(model.predict, [1, 2])) == [10, 20]
        assert ex.submit(partial, 2).result(timeout=60) == 14
        assert list(ex.map(partial, [1])) == [7]
        for k in (3, 5):
            assert ex.submit(tasks.make_multiplier(k), 2).result(timeout=60) == 2 * k
    with shoal.Pool(2, start_method=start_method) as pool:
        model.w = 1
        assert pool.apply_async(model.predict, (3,)).get(timeout=60) == 3
        model.w = 4
        assert pool.apply_async(model.predict, (3,)).get(timeout=60) == 12
        assert pool.map(model.predict, [1, 2]) == [4, 8]
        factor[0] = 3
        assert pool.apply_async(partial, (2,)).get(timeout=60) == 6
        assert list(pool.imap(tasks.make_multiplier(9), [1])) == [9]


# --- maps nobody reads ----------------------------------------------------------


def test_unread_executor_map_runs_every_item_before_shutdown_returns(no_leaks):
    directory = tempfile.mkdtemp()
    with shoal.Executor(2) as ex:
        ex.map(tasks.touch, range(1000), [directory] * 1000)  # results never read
    assert len(os.listdir(directory)) == 1000


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_unread_pool_imap_runs_every_item_before_join_returns(method, no_leaks):
    directory = tempfile.mkdtemp()
    pool = shoal.Pool(2)
    getattr(pool, method)(functools.partial(tasks.touch, directory=directory), range(1000))
    pool.close()
    pool.join()
    assert len(os.listdir(directory)) == 1000


def test_a_map_read_in_part_then_shut_down_still_runs_every_item(no_leaks):
    directory = tempfile.mkdtemp()
    ex = shoal.Executor(2)
    results = ex.map(tasks.touch, range(3000), [directory] * 3000)
    next(results)
    ex.shutdown(wait=True)  # the stdlib has submitted all 3000 by now
    assert len(os.listdir(directory)) == 3000
    del results


# --- exceptions stdlib code catches ---------------------------------------------


def test_worker_lost_error_is_a_broken_process_pool(no_leaks):
    assert issubclass(shoal.WorkerLostError, cf.process.BrokenProcessPool)
    with shoal.Executor(1) as ex:
        fut = ex.submit(tasks.kill_self_if, 1, [1])
        with pytest.raises(cf.process.BrokenProcessPool):
            fut.result(timeout=60)
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9  # the pool goes on


def test_arguments_the_worker_cannot_unpickle_fail_that_task_only(start_method, no_leaks):
    with _executor(start_method) as ex:
        with pytest.raises(cf.process.BrokenProcessPool) as info:
            ex.submit(tasks.identity, tasks.Unloadable()).result(timeout=60)
        assert isinstance(info.value, shoal.TransferError)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(shoal.TransferError):
            list(ex.map(tasks.identity, [tasks.Unloadable()] * 3))
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9


def test_a_result_the_caller_cannot_unpickle_fails_that_task_only(no_leaks):
    with shoal.Executor(1) as ex:
        with pytest.raises(shoal.TransferError) as info:
            ex.submit(tasks.Unloadable).result(timeout=60)
        assert isinstance(info.value.__cause__, ValueError)
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9


def test_pool_unpicklable_result_is_maybe_encoding_error(no_leaks):
    with shoal.Pool(1) as pool:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="Error sending result"):
            pool.apply(tasks.unpicklable_result)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            pool.map(tasks.unpicklable_result, [1, 2])
        assert pool.apply(tasks.square, (3,)) == 9


def test_system_exit_while_pickling_a_result_fails_that_task_only(no_leaks):
    with shoal.Executor(1) as ex:
        with pytest.raises(pickle.PicklingError) as info:  # never a SystemExit in the caller
            ex.submit(tasks.exits_when_pickled).result(timeout=60)
        assert "SystemExit(7)" in str(info.value)
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9


def test_unpicklable_callable_fails_through_the_result(no_leaks):
    lock = threading.Lock()
    with shoal.Executor(1) as ex:
        fut = ex.submit(functools.partial(tasks.identity, lock))
        with pytest.raises(TypeError):
            fut.result(timeout=60)
        with pytest.raises(TypeError):
            list(ex.map(functools.partial(tasks.add, lock), [1]))
    with shoal.Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.apply_async(tasks.identity, (lock,)).get(timeout=60)


@pytest.mark.parametrize("start_method", ["forkserver", "inline"])
@pytest.mark.parametrize("not_callable", [None, 5])
def test_a_callable_that_is_not_one_fails_through_the_result_as_the_stdlibs(start_method, not_callable, no_leaks):
    # As ProcessPoolExecutor and multiprocessing.Pool: the future (or get()) raises
    # the TypeError that calling it raises; the pool goes on. None once ran as the
    # pool's "no function yet" and broke the task instead.
    message = f"'{type(not_callable).__name__}' object is not callable"
    with shoal.Executor(1, start_method=start_method) as ex:
        with pytest.raises(TypeError, match=message):
            ex.submit(not_callable).result(timeout=60)
        assert ex.submit(tasks.identity, 7).result(timeout=60) == 7
    with shoal.Pool(1, start_method=start_method) as pool:
        with pytest.raises(TypeError, match=message):
            pool.apply(not_callable)
        assert pool.apply(tasks.identity, (8,)) == 8


# --- argument validation, as the stdlib's ---------------------------------------


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: shoal.Executor(0), ValueError),
        (lambda: shoal.Executor(-1), ValueError),
        (lambda: shoal.Executor(1, max_tasks_per_child="12"), TypeError),
        (lambda: shoal.Executor(1, max_tasks_per_child=0), ValueError),
        (lambda: shoal.Executor(1, initializer=3), TypeError),
        (lambda: shoal.Executor(1, start_method="thread"), ValueError),
        (lambda: shoal.Pool(0), ValueError),
        (lambda: shoal.Pool(1, maxtasksperchild="12"), ValueError),
        (lambda: shoal.Pool(1, maxtasksperchild=0), ValueError),
        (lambda: shoal.Pool(1, initializer=3), TypeError),
    ],
)
def test_bad_pool_arguments_raise_as_the_stdlib(make, error):
    with pytest.raises(error):
        make()


def test_bad_map_arguments_raise_value_error(no_leaks):
    with shoal.Executor(1) as ex:
        with pytest.raises(ValueError):
            ex.map(tasks.square, [1], chunksize=-1)
        with pytest.raises(ValueError):
            ex.map(tasks.square, [1], task_timeout=0)
    with shoal.Pool(1) as pool:
        for method in (pool.map, pool.imap, pool.imap_unordered, pool.map_async):
            with pytest.raises(ValueError):
                method(tasks.square, [1], chunksize=-1)
            with pytest.raises(ValueError):
                method(tasks.square, [1], task_timeout=0)


def test_mp_context_and_context_pick_the_start_method(no_leaks):
    with shoal.Executor(1, multiprocessing.get_context("spawn")) as ex:
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9
    with shoal.Pool(1, None, (), None, multiprocessing.get_context("fork")) as pool:
        assert pool.apply(tasks.square, (4,)) == 16


def test_inline_mode_runs_the_initializer():
    seen = []
    with shoal.Pool(2, seen.append, ("ready",), start_method="inline") as pool:
        assert pool.apply(os.getpid) == os.getpid()
    assert seen == ["ready"]


# --- futures ----------------------------------------------------------------------


def test_future_cancel_twice_and_repr(no_leaks):
    release = shoal.Event()
    with shoal.Executor(1) as ex:
        blocker = ex.submit(tasks.wait_for_event, release)  # holds the only worker
        queued = [ex.submit(tasks.square, i) for i in range(200)]
        last = queued[-1]  # far behind what a worker prefetches: still in the queue
        assert last.cancel() is True
        assert last.cancel() is True  # as the base class: cancelling twice is no error
        assert last.cancelled() and not last.running()
        assert repr(blocker).startswith("<Future at")
        release.set()
        assert blocker.result(timeout=60) is True


# --- workers do not hold the caller's file descriptors ----------------------------


def test_forkserver_workers_hold_none_of_the_callers_fds_but_fork_ones_do(no_leaks):
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        fd = child.stdin.fileno()
        with shoal.Executor(1) as ex:
            assert ex.submit(tasks.read_fd_is_open, fd).result(timeout=60) is False
        with shoal.Executor(1, start_method="fork") as ex:
            assert ex.submit(tasks.read_fd_is_open, fd).result(timeout=60) is True
        child.stdin.close()  # no worker keeps the pipe open: the child sees EOF
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait(timeout=60)


# --- __main__ of a real script ------------------------------------------------------

_SCRIPT = """
import dataclasses, enum, pickle, sys, threading
import shoal

@dataclasses.dataclass
class Point:
    x: int
    y: int

class Color(enum.Enum):
    RED = 1

def check(p, c):
    return isinstance(p, Point) and p == Point(1, 2) and c is Color.RED

def pickles_main_function(_):
    return len(pickle.dumps(check)) > 0

def first(items):
    return items[0]

if __name__ == "__main__":
    method = sys.argv[1]
    results = []
    with shoal.Executor(2, start_method=method) as ex:
        results.append(ex.submit(check, Point(1, 2), Color.RED).result(timeout=60))
        results.append(all(ex.map(check, [Point(1, 2)] * 3, [Color.RED] * 3)))
        results.append(ex.submit(pickles_main_function, 1).result(timeout=60))
        results.append(ex.submit(first, [Point(1, 2)]).result(timeout=60) == Point(1, 2))
        with shoal.Pool(2, start_method=method) as pool:  # a second pool while the first one runs
            results.append(pool.apply(first, ([Point(1, 2)],)) == Point(1, 2))
            results.append(all(pool.starmap(check, [(Point(1, 2), Color.RED)] * 3)))
    print("RESULTS", results)
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_main_script_classes_are_the_same_classes_in_workers(method, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(_SCRIPT)
    out = _python(str(script), method)
    assert out.returncode == 0, out.stderr
    assert "RESULTS [True, True, True, True, True, True]" in out.stdout, out.stdout + out.stderr


def test_main_module_run_with_dash_m(tmp_path):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "job.py").write_text(_SCRIPT)
    out = _python("-m", "userpkg.job", "spawn", extra_path=[str(tmp_path)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "RESULTS [True, True, True, True, True, True]" in out.stdout, out.stdout + out.stderr


def test_submit_after_interpreter_shutdown_began_raises_runtime_error(tmp_path):
    code = textwrap.dedent("""
        import atexit
        def late():
            try:
                ex.submit(tasks.square, 2)
            except RuntimeError as e:
                print("RAISED", type(e).__name__, e)
        atexit.register(late)  # registered before shoal's own exit hook, so it runs after it
        import shoal, tasks
        ex = shoal.Executor(1)
    """)
    out = _python("-c", code, cwd=TESTS)
    assert "RAISED RuntimeError" in out.stdout, out.stdout + out.stderr


# --- workers' standard streams ------------------------------------------------------


def test_workers_start_when_the_callers_stdout_is_no_file(no_leaks):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for method in START_METHODS:
            with shoal.Executor(1, start_method=method) as ex:
                assert ex.submit(tasks.say, "hello").result(timeout=60) == "hello"


def test_worker_output_is_linear_and_has_the_text_stream_api(tmp_path):
    code = textwrap.dedent("""
        import shoal, tasks
        with shoal.Executor(1) as ex:
            print("RETURNED", ex.submit(tasks.write_without_newline, 10_240_000).result(timeout=300))
    """)
    out = _python("-c", code, text=False, timeout=300, cwd=TESTS)
    assert out.returncode == 0, out.stderr
    assert b"RETURNED 10240000" in out.stdout
    assert out.stdout.count(b"x") == 10_240_000 and b"|end\n" in out.stdout


def test_workers_survive_a_closed_stdout(tmp_path):
    code = textwrap.dedent("""
        import os, sys, shoal, tasks
        os.close(1)
        with shoal.Executor(1) as ex:
            sys.stderr.write("RESULT %s\\n" % ex.submit(tasks.say, "into the void").result(timeout=60))
    """)
    out = _python("-c", code, cwd=TESTS)
    assert "RESULT into the void" in out.stderr, out.stderr


# --- object lifetimes, as the stdlib's own tests check them -------------------------


def _collected(ref, timeout=30.0):
    import gc
    import time

    deadline = time.monotonic() + timeout
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    return ref() is None


def test_nothing_is_held_after_a_task_ends(no_leaks):
    import weakref

    with shoal.Executor(2) as ex:
        box = tasks.Box(3)
        watch_callable = weakref.ref(box)
        fut = ex.submit(box.get)
        assert fut.result(timeout=60) == 3
        del box
        assert _collected(watch_callable), "the pool still holds the task's callable"
        arg = tasks.Box(4)
        watch_arg = weakref.ref(arg)
        assert ex.submit(tasks.identity, arg).result(timeout=60).value == 4
        del arg
        assert _collected(watch_arg), "the pool still holds the task's argument"
        fut = ex.submit(tasks.boxed, 5)
        watch_result = weakref.ref(fut.result(timeout=60))
        del fut
        assert _collected(watch_result), "the pool still holds the task's result"


def test_map_iterators_drop_each_result_once_yielded(no_leaks):
    import weakref

    with shoal.Executor(2) as ex:
        results = ex.map(tasks.boxed, range(50), chunksize=50)
        first = next(results)
        watch = weakref.ref(first)
        del first
        assert _collected(watch), "Executor.map still holds a result it yielded"
        list(results)
    with shoal.Pool(2) as pool:
        results = pool.imap(tasks.boxed, range(50), chunksize=50)
        first = next(results)
        watch = weakref.ref(first)
        del first
        assert _collected(watch), "Pool.imap still holds a result it yielded"
        list(results)
        out = pool.map(tasks.boxed, range(10))
        watch = weakref.ref(out[0])
        del out
        assert _collected(watch), "Pool.map holds its results after returning"


def test_max_tasks_per_child_counts_tasks_in_maps(no_leaks):
    with shoal.Executor(2, max_tasks_per_child=1) as ex:
        pids = list(ex.map(tasks.pid_of, range(30)))
    assert len(set(pids)) == 30


# --- multiprocessing objects in initargs and task arguments -------------------------

_MP_OBJECTS_SCRIPT = """
import logging, logging.handlers, multiprocessing as mp, sys
import shoal

def init(q, lock, ev):
    global L, E
    L, E = lock, ev
    root = logging.getLogger()
    root.addHandler(logging.handlers.QueueHandler(q))  # the logging cookbook's pattern
    root.setLevel(logging.INFO)

def work(x):
    with L:
        logging.info("item %d", x)
    E.set()
    return x

def use_proxy(d, x):
    d[x] = x * x
    return len(d)

if __name__ == "__main__":
    method = sys.argv[1]
    q, lock, ev = mp.Queue(), mp.Lock(), mp.Event()
    with shoal.Executor(2, initializer=init, initargs=(q, lock, ev), start_method=method, max_tasks_per_child=1) as ex:
        assert list(ex.map(work, range(3))) == [0, 1, 2]
    print("LOGGED", sorted(q.get(timeout=30).getMessage() for _ in range(3)), ev.is_set())
    with mp.Manager() as manager:
        d = manager.dict()
        with shoal.Pool(2, start_method=method) as pool:
            print("PROXY", pool.apply(use_proxy, (d, 3)), dict(d))
"""


@pytest.mark.parametrize("method", ["forkserver", "fork"])
def test_mp_queue_lock_event_in_initargs_and_manager_proxies_work(method, tmp_path):
    script = tmp_path / "mp_objects.py"
    script.write_text(_MP_OBJECTS_SCRIPT)
    out = _python(str(script), method)
    assert out.returncode == 0, out.stderr
    assert "LOGGED ['item 0', 'item 1', 'item 2'] True" in out.stdout, out.stdout + out.stderr
    assert "PROXY 1 {3: 9}" in out.stdout, out.stdout + out.stderr


_FRESH_WORKERS_SCRIPT = """
import gc, logging, logging.handlers, multiprocessing as mp, os, sys, threading
import shoal

def init(q, lock, ev):
    global L, E
    L, E = lock, ev
    root = logging.getLogger()
    root.addHandler(logging.handlers.QueueHandler(q))  # the logging cookbook's pattern
    root.setLevel(logging.INFO)

def work(x):
    with L:
        logging.info("item %d", x)
    E.set()
    return x

if __name__ == "__main__":
    method = sys.argv[1]
    # As with the stdlib, objects made for a fresh interpreter come from a
    # context that starts one ("spawn" or "forkserver"), never "fork".
    ctx = mp.get_context("spawn" if method == "spawn" else "forkserver")
    q, lock, ev = ctx.Queue(), ctx.Lock(), ctx.Event()
    # A thread running while the pool starts: the fork server cannot be forked
    # from this process and starts as a fresh interpreter.
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)
    busy.start()
    with shoal.Executor(1, start_method=method) as warm:  # what a process keeps once it used a pool
        warm.submit(os.getpid).result(timeout=60)
    del warm
    gc.collect()
    before = set(os.listdir("/proc/self/fd"))
    with shoal.Executor(2, initializer=init, initargs=(q, lock, ev), start_method=method, max_tasks_per_child=1) as ex:
        assert list(ex.map(work, range(3))) == [0, 1, 2]
        # Replacement workers get them too. (They replace workers that retire,
        # not ones killed: a worker killed while its Queue's feeder thread holds
        # the Queue's lock would leave it locked for every other writer, as
        # with the stdlib.)
        assert list(ex.map(work, range(3, 6), chunksize=1)) == [3, 4, 5]
    del ex  # the pool object holds its engine (and its supervisor's eventfd) until it goes
    gc.collect()
    stop.set()
    busy.join()
    print("LOGGED", sorted(q.get(timeout=30).getMessage() for _ in range(6)), ev.is_set())
    left = set(os.listdir("/proc/self/fd")) - before
    print("FDS", len(left), [os.readlink("/proc/self/fd/" + fd) for fd in left if os.path.exists("/proc/self/fd/" + fd)])
    fork_q = mp.get_context("fork").Queue()
    try:
        shoal.Executor(1, initializer=init, initargs=(fork_q, lock, ev), start_method="spawn")
    except RuntimeError as exc:
        print("REFUSED", "fork context" in str(exc))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_mp_objects_in_initargs_reach_fresh_worker_interpreters(method, tmp_path):
    # Fresh interpreters get an mp.Queue's pipes as a spawned child of the
    # stdlib does (inherited at the same descriptor numbers, for every worker
    # started later too); nothing is left open once the pool is gone.
    script = tmp_path / "fresh_workers.py"
    script.write_text(_FRESH_WORKERS_SCRIPT)
    out = _python(str(script), method)
    assert out.returncode == 0, out.stderr
    items = ", ".join(f"'item {i}'" for i in range(6))
    assert f"LOGGED [{items}] True" in out.stdout, out.stdout + out.stderr
    assert "FDS 0 []" in out.stdout, out.stdout + out.stderr
    assert "REFUSED True" in out.stdout, out.stdout + out.stderr  # as ProcessPoolExecutor(mp_context=spawn)


_PROXY_SCRIPT = """
import multiprocessing as mp
import shoal

def use_proxy(d, x):
    d[x] = x * x
    return len(d)

if __name__ == "__main__":
    with mp.Manager() as manager:
        d = manager.dict()
        with shoal.Executor(1, start_method="spawn") as ex:  # the worker needs the parent's authkey
            print("PROXY", ex.submit(use_proxy, d, 3).result(timeout=60), dict(d))
"""


def test_manager_proxies_reach_spawned_workers(tmp_path):
    script = tmp_path / "proxy.py"
    script.write_text(_PROXY_SCRIPT)
    out = _python(str(script))
    assert "PROXY 1 {3: 9}" in out.stdout, out.stdout + out.stderr


def test_a_script_without_main_guard_breaks_the_pool_with_a_clear_error(tmp_path):
    # As the stdlib's spawn: a fresh worker interpreter imports the script, which
    # would start a pool again. The pool breaks saying so; nothing hangs.
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import os, shoal
        try:
            with shoal.Executor(1, start_method="spawn") as ex:
                ex.submit(os.getpid).result(timeout=60)
        except shoal.BrokenPoolError as exc:
            print("BROKEN", "could not import the main module" in str(exc), "proper idiom" in str(exc))
    """))
    out = _python(str(script))
    assert "BROKEN True True" in out.stdout, out.stdout + out.stderr


def test_future_is_running_while_its_task_runs(no_leaks):
    import time

    release = shoal.Event()
    with shoal.Executor(1) as ex:
        fut = ex.submit(tasks.wait_for_event, release)  # cannot finish before release.set()
        deadline = time.monotonic() + 60
        while not fut.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fut.running() and not fut.done()
        release.set()
        assert fut.result(timeout=60) is True
        assert not fut.running()


def test_fork_start_method_forks_while_other_threads_run(no_leaks):
    # As multiprocessing's "fork": another Python thread (a tqdm monitor, a
    # server's) does not turn it into a fresh interpreter that inherits nothing.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(60,), daemon=True)
    other.start()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with shoal.Executor(1, start_method="fork") as ex:
            assert ex.submit(tasks.read_fd_is_open, child.stdin.fileno()).result(timeout=60) is True
    finally:
        stop.set()
        other.join(timeout=60)
        child.stdin.close()
        child.wait(timeout=60)


def test_submit_passes_every_keyword_to_the_function(no_leaks):
    # As ProcessPoolExecutor.submit(fn, /, *args, **kwargs): `timeout` and
    # `retries` are the task's own arguments; shoal's settings go through with_options().
    with shoal.Executor(1) as ex:
        got = ex.submit(tasks.kwargs_echo, 1, timeout=5, retries=2).result(timeout=60)
        assert got == ((1,), {"timeout": 5, "retries": 2})
        safe = ex.with_options(retries=1, task_timeout=60)
        assert safe.submit(tasks.kwargs_echo, timeout=7).result(timeout=60) == ((), {"timeout": 7})
        assert list(safe.map(tasks.square, range(4), timeout=60)) == [0, 1, 4, 9]
        with pytest.raises(ValueError):
            ex.with_options(task_timeout=0)
