"""shoal.Queue: the multiprocessing.Queue API over shared memory."""
import gc
import multiprocessing as mp
import os
import pickle
import queue
import threading
import time

import pytest

from shoal import Queue
from conftest import wait_until_asleep
from shm_segments import shoal_segments_of

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is optional
    np = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")
spawn = mp.get_context("spawn")
JOIN_TIMEOUT = 60


def run(target, *args):
    """Runs ``target(*args)`` in a spawned process; returns the process (joined)."""
    p = spawn.Process(target=target, args=args)
    p.start()
    return p


def eventually(cond, timeout=JOIN_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def join_ok(p) -> None:
    p.join(JOIN_TIMEOUT)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{p.name} did not finish within {JOIN_TIMEOUT}s")
    assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


# --- targets for spawned processes (module level, so spawn can import them) ---


def produce_numbered(q, producer, count):
    for i in range(count):
        q.put((producer, i, f"message {i} from {producer}"), timeout=30)


def consume_into(q, results, count):
    got = [q.get(timeout=30) for _ in range(count)]
    results.put(got, timeout=30)


def echo(inbox, outbox, count):
    for _ in range(count):
        outbox.put(inbox.get(timeout=30), timeout=30)


def get_until_closed(q, results):
    got = []
    try:
        while True:
            got.append(q.get(timeout=30))
    except ValueError:  # closed and drained
        results.put(("closed", got), timeout=30)


def attach_and_exit(q):
    q.put("attached", timeout=30)


# --- tests ----------------------------------------------------------------


def test_objects_cross_spawned_processes_in_order():
    q = Queue()
    p = run(produce_numbered, q, 0, 3000)
    got = [q.get(timeout=30) for _ in range(3000)]
    join_ok(p)
    assert got == [(0, i, f"message {i} from 0") for i in range(3000)]
    assert q.empty()


def test_many_messages_through_a_small_queue_stay_ordered():
    q = Queue(capacity_bytes=2048)  # a few dozen messages at most: constant wrap-around and waiting
    p = run(produce_numbered, q, 7, 5000)
    for i in range(5000):
        assert q.get(timeout=30) == (7, i, f"message {i} from 7")
    join_ok(p)


def test_several_producers_and_consumers_lose_and_duplicate_nothing():
    q = Queue(capacity_bytes=4096)
    results = Queue()
    producers = [run(produce_numbered, q, k, 400) for k in range(2)]
    consumers = [run(consume_into, q, results, 400) for _ in range(2)]
    per_consumer = [results.get(timeout=60), results.get(timeout=60)]
    for p in producers + consumers:
        join_ok(p)
    received = per_consumer[0] + per_consumer[1]
    assert sorted(received) == sorted((k, i, f"message {i} from {k}") for k in range(2) for i in range(400))
    for got in per_consumer:  # FIFO: each consumer saw each producer's messages in order
        for k in range(2):
            seqs = [i for (producer, i, _) in got if producer == k]
            assert seqs == sorted(seqs)
    assert q.empty()


def test_get_from_a_spawned_consumer_and_back():
    inbox, outbox = Queue(), Queue()
    p = run(echo, inbox, outbox, 3)
    objs = [{"a": [1, 2, {"b": None}]}, ("tuple", 1.5, b"\x00bytes"), set(range(10))]
    for obj in objs:
        inbox.put(obj)
    assert [outbox.get(timeout=30) for _ in objs] == objs
    join_ok(p)


def test_empty_raises_queue_empty_with_timeout_and_nowait():
    q = Queue()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    deadline = time.monotonic() + 0.1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    assert time.monotonic() >= deadline  # it waited out its timeout, not less
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)  # a negative timeout does not wait


def test_full_raises_queue_full_with_timeout_and_nowait():
    q = Queue(2)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2 and q.maxsize == 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    deadline = time.monotonic() + 0.1
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.1)
    assert time.monotonic() >= deadline  # it waited out its timeout, not less
    assert q.get() == 1
    q.put(3, timeout=1)
    assert [q.get(), q.get()] == [2, 3]


def test_queue_full_by_bytes_too():
    q = Queue(capacity_bytes=1000)
    q.put(b"x" * 800)
    with pytest.raises(queue.Full):
        q.put(b"y" * 800, timeout=0.05)
    q.put(b"z" * 10)  # a small one still fits
    assert q.qsize() == 2


def test_too_large_object_raises_value_error_and_queue_still_works():
    q = Queue(capacity_bytes=1000)
    with pytest.raises(ValueError, match=r"\d+ bytes.*capacity_bytes is 1000.*Queue\(capacity_bytes="):
        q.put(b"x" * 5000)
    with pytest.raises(ValueError):
        q.put(b"x" * 5000, block=False)
    q.put("still works")
    assert q.get(timeout=1) == "still works"


def test_largest_object_that_fits_goes_through():
    payload = pickle.dumps(b"x" * 900, protocol=5)
    q = Queue(capacity_bytes=len(payload))
    q.put(b"x" * 900)
    assert q.get(timeout=1) == b"x" * 900


def test_arbitrary_picklable_objects_round_trip():
    q = Queue()
    objs = [
        None, 0, -1, 2**100, 3.25, "text", "", b"", b"\xff" * 100, bytearray(b"ba"),
        [1, [2, [3]]], {"nested": {"dict": [1, 2]}, 3: (4, 5)}, frozenset({1, 2}),
        ValueError("an error"), range(10), complex(1, 2),
    ]
    for obj in objs:
        q.put(obj)
    assert q.qsize() == len(objs)
    for obj in objs:
        got = q.get(timeout=1)
        if isinstance(obj, Exception):
            assert type(got) is type(obj) and got.args == obj.args
        else:
            assert got == obj and type(got) is type(obj)


@needs_numpy
def test_numpy_arrays_round_trip_writable_and_aligned():
    q = Queue(capacity_bytes=16 << 20)
    arrays = [
        np.arange(1_000_000, dtype=np.float64),  # out-of-band, 8 MB
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20)[::3],  # not contiguous: pickled in-band
        np.zeros((0, 5)),
        np.array(3.5),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ]
    for a in arrays:
        q.put(a)
    for a in arrays:
        got = q.get(timeout=5)
        assert got.dtype == a.dtype and got.shape == a.shape
        assert np.array_equal(got, a)
        assert got.flags.writeable
    several = {"x": np.ones(1000), "y": np.full(3, 7, dtype=np.uint8), "z": [np.arange(5)]}
    q.put(several)
    got = q.get(timeout=5)
    assert np.array_equal(got["x"], several["x"]) and np.array_equal(got["z"][0], several["z"][0])
    assert got["x"].ctypes.data % 16 == 0 and got["y"].ctypes.data % 16 == 0


@needs_numpy
def test_numpy_array_crosses_a_spawned_process():
    inbox, outbox = Queue(capacity_bytes=4 << 20), Queue(capacity_bytes=4 << 20)
    p = run(echo, inbox, outbox, 1)
    a = np.random.default_rng(0).standard_normal((300, 400))
    inbox.put(a)
    assert np.array_equal(outbox.get(timeout=30), a)
    join_ok(p)


def test_close_refuses_puts_and_drains_gets():
    q = Queue()
    q.put("a")
    q.put("b")
    q.close()
    q.close()  # idempotent
    assert q.closed
    with pytest.raises(ValueError, match="closed"):
        q.put("c")
    assert q.get() == "a"
    assert q.get_nowait() == "b"
    with pytest.raises(ValueError, match="closed"):
        q.get()
    with pytest.raises(ValueError, match="closed"):
        q.get_nowait()
    q.join_thread()
    q.cancel_join_thread()


def test_close_wakes_a_consumer_in_another_process():
    q, results = Queue(), Queue()
    p = run(get_until_closed, q, results)
    q.put(1)
    q.put(2)
    assert eventually(q.empty), "the consumer did not take the two items"
    assert wait_until_asleep(p.pid), "the consumer did not fall asleep waiting for more"
    q.close()
    assert results.get(timeout=30) == ("closed", [1, 2])
    join_ok(p)


def once_this_thread_sleeps(action):
    """Starts a thread that runs `action` once the calling thread is asleep (in
    the blocking call it makes next); join() it for whether it saw that."""
    caller, ready = threading.get_native_id(), threading.Event()

    class Helper(threading.Thread):
        saw_the_caller_asleep = False

        def run(self):
            ready.wait(JOIN_TIMEOUT)
            self.saw_the_caller_asleep = wait_until_asleep(os.getpid(), caller)
            action()

    helper = Helper()
    helper.start()
    ready.set()  # past start()'s own wait: the next sleep is the blocking call's
    return helper


def test_blocked_get_releases_the_gil():
    q = Queue()
    helper = once_this_thread_sleeps(lambda: q.put("from a thread"))
    assert q.get(timeout=JOIN_TIMEOUT) == "from a thread"  # only if get let the helper run
    helper.join(JOIN_TIMEOUT)
    assert helper.saw_the_caller_asleep


def test_blocked_put_releases_the_gil():
    q = Queue(1)
    q.put("first")
    helper = once_this_thread_sleeps(q.get)
    q.put("second", timeout=JOIN_TIMEOUT)  # room only if put let the helper run
    helper.join(JOIN_TIMEOUT)
    assert helper.saw_the_caller_asleep
    assert q.get(timeout=1) == "second"


def test_queue_pickles_by_name_and_attaches():
    q = Queue(5, capacity_bytes=4096)
    twin = pickle.loads(pickle.dumps(q))
    assert twin.name == q.name and twin.maxsize == 5 and twin.capacity_bytes == 4096
    twin.put("via twin")
    assert q.get(timeout=1) == "via twin"
    q.put(Queue.attach(q.name))  # a queue inside a message
    inner = q.get(timeout=1)
    inner.put("inner")
    assert q.get(timeout=1) == "inner"
    assert q.name in repr(q)


def test_attach_to_a_missing_queue_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        Queue.attach("shoal-1-no-such-queue")


def test_deleting_the_queue_unlinks_its_shared_memory():
    before = shoal_segments_of()
    q = Queue()
    name = q.name
    assert name.startswith(f"shoal-{os.getpid()}-")
    p = run(attach_and_exit, q)  # a process that attached and exited leaves the name in place
    assert q.get(timeout=30) == "attached"
    join_ok(p)
    assert os.path.exists(f"/dev/shm/{name}")
    twin = pickle.loads(pickle.dumps(q))
    del q
    gc.collect()
    assert not os.path.exists(f"/dev/shm/{name}"), "the creator's queue must unlink its name"
    twin.put("attached objects keep working")  # the mapping outlives the name
    assert twin.get(timeout=1) == "attached objects keep working"
    del twin
    gc.collect()
    assert shoal_segments_of() - before == set()


def test_invalid_capacity_is_refused():
    with pytest.raises(ValueError):
        Queue(capacity_bytes=0)
