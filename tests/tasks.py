"""Task functions for the pool tests (importable by worker processes)."""
import os
import time

import shoal

_state = {}


def square(x):
    return x * x


def add(a, b):
    return a + b


def echo_call(*args, **kwargs):
    return args, kwargs


def identity(x):
    return x


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def worker_id_and_pid(_=None):
    return shoal.worker_id(), os.getpid()


def remember(key, value):
    _state[key] = value


def recall(key):
    return _state.get(key)


def raise_in_init():
    raise RuntimeError("initializer exploded")


def unpicklable_result(_=None):
    import threading

    return threading.Lock()  # no pickler can send a lock back


def kwargs_echo(*args, **kwargs):
    return args, kwargs


def big_bytes(n):
    return b"x" * n


def length(data):
    return len(data)


def kill_self_once(x, marker_dir):
    """Kills its own worker with SIGKILL the first time it runs for a marked x."""
    import signal

    marker = os.path.join(marker_dir, str(x))
    if os.path.exists(marker + ".doomed"):
        try:
            os.rename(marker + ".doomed", marker + ".killed")
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def kill_self_if(x, doomed):
    import signal

    if x in doomed:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def sleep_forever(_=None):
    while True:
        time.sleep(1)


_ballast = []


def allocate_mib(n, keep=False):
    block = bytearray(n << 20)
    for i in range(0, len(block), 4096):  # touch every page so it counts as resident
        block[i] = 1
    if keep:
        _ballast.append(block)
    return os.getpid()


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("carries a lock")
        self.lock = lock


def raise_unpicklable(_=None):
    import threading

    raise Unpicklable(threading.Lock())


def say(text):
    print(text)
    return text


def stdout_state(_=None):
    import sys

    return sys.stdout.line_buffering, type(sys.stdout).__name__, sys.stdout.fileno()


def describe_array(arr):
    """What a worker sees of an array argument."""
    from shoal.shm.shared_array import in_shared_memory

    return arr.shape, str(arr.dtype), bool(arr.flags.writeable), in_shared_memory(arr), float(arr.sum())


def fill_slice(shared, start, stop, value):
    shared[start:stop] = value
    return stop - start


def ones(n, dtype="float64"):
    import numpy as np

    return np.ones(n, dtype=dtype)


def try_write(arr):
    try:
        arr[0] = 1
    except ValueError:
        return "refused"
    return "written"


def shm_mappings_of_at_least(nbytes):
    """The shoal segments this process maps with at least `nbytes` (live or already
    unlinked): files in /dev/shm, or memfds (shown as /memfd:<label>)."""
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith(("/dev/shm/shoal-", "/memfd:shoal-")):
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if high - low >= nbytes:
                    found.add(fields[5])
    return sorted(found)


def wait_at_barrier(barrier, timeout):
    return barrier.wait(timeout)


def append_line(x, path):
    """Records that item x ran (one line per run), then fails for multiples of 5."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    if x % 5 == 0:
        raise ValueError(f"item {x} is a multiple of 5")
    return x


def churn_heap_then_report(n):
    """Builds and frees n small objects, then says how many bytes of freed heap
    arenas this worker keeps for reuse."""
    from shoal import _core

    junk = [str(i) for i in range(n)]
    del junk
    return _core.heap_cache_bytes()


def heap_cache_bytes(_=None):
    from shoal import _core

    return _core.heap_cache_bytes()


def touch(x, directory):
    """Leaves a file named x in directory: proof that task x ran."""
    open(os.path.join(directory, str(x)), "w").close()
    return x


class Scaler:
    """A model whose state changes between submissions (stale-callable tests)."""

    def __init__(self, w):
        self.w = w

    def predict(self, x):
        return x * self.w


def scale_by(factor, x):
    return factor[0] * x


def make_multiplier(k):
    def multiply(x):
        return x * k

    return multiply


class Unloadable:
    """Pickles fine; unpickling it raises (in whichever process loads it)."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def _refuse_to_load():
    raise ValueError("this object refuses to be unpickled")


class ExitsWhenPickled:
    def __reduce__(self):
        raise SystemExit(7)


def exits_when_pickled(_=None):
    return ExitsWhenPickled()


def read_fd_is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return os.readlink(f"/proc/self/fd/{fd}") != "/dev/null"


def write_without_newline(total, piece=1024):
    import sys

    chunk = "x" * piece
    for _ in range(total // piece):
        sys.stdout.write(chunk)
    sys.stdout.buffer.write(b"|end\n")
    sys.stdout.flush()
    return total


class Box:
    """A result or argument that weak references can watch."""

    def __init__(self, value=0):
        self.value = value

    def get(self, _=None):
        return self.value


def boxed(x):
    return Box(x)


def pid_of(_=None):
    return os.getpid()


def leave_a_pool_open(_=None):
    """A task that starts a pool of its own and never shuts it down."""
    inner = shoal.Executor(1)
    inner.submit(square, 2).result(timeout=60)
    _state["inner"] = inner  # kept alive until the worker exits
    return os.getpid()


def four_mib(i):
    import numpy as np

    return np.full(512 * 1024, i, dtype=np.float64)


def first_value(a):
    return float(a[0])


def wait_for_event(event, timeout=60):
    return event.wait(timeout)


def signal_then_wait_for_event(started, event, timeout=60):
    """Releases the semaphore `started` (whoever acquires it then knows this
    task runs), then waits for `event`."""
    started.release()
    return event.wait(timeout)


class LoudRepr:
    """An argument whose __repr__ must never run in a worker (it would print and raise)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        print("LoudRepr.__repr__ ran", flush=True)
        raise RuntimeError("__repr__ ran")


def value_after(arg, seconds):
    time.sleep(seconds)
    return arg.value


def kill_self_once_on_first(seq, marker_dir):
    """kill_self_once() of ``seq[0]``: a task whose item is a container."""
    return kill_self_once(seq[0], marker_dir)
