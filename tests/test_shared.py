"""shoal.shm.shared_array (SharedArray, share) and shoal.wire.payload (pack/unpack over a shared-memory arena)."""
import gc
import multiprocessing as mp
import os
import pickle
import threading

import numpy as np
import pytest

from shoal.shm import shared_array as shared
from shoal.wire import payload as wire
from shoal.shm.shared_array import Arena, SharedArray, in_shared_memory, share
from shm_segments import shoal_segments_of

spawn = mp.get_context("spawn")
JOIN_TIMEOUT = 60
MiB = 1 << 20


def own_segments() -> set:
    """The segments of this process's arenas: names in /dev/shm, and the memfds it holds."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/memfd:shoal-{os.getpid()}-"):
            held.add(target)
    return shoal_segments_of() | held


def run_child(target, *args) -> None:
    p = spawn.Process(target=target, args=args)
    p.start()
    p.join(JOIN_TIMEOUT)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{p.name} did not finish within {JOIN_TIMEOUT}s")
    assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"


def block_of(arr):
    view = shared._view_of(arr)
    return view.arena, view.block


@pytest.fixture
def arena():
    """An arena of the test's own, checked empty and consistent, then closed."""
    a = Arena.create(limit=512 * MiB)
    yield a
    gc.collect()
    assert a.check() == ""
    a.close()


# --- targets for spawned processes (module level, so spawn can import them) ---


def write_slice(arr, start, stop, value):
    assert isinstance(arr, SharedArray)
    assert arr.flags.writeable
    assert in_shared_memory(arr), "the child's array is not a view of the shared memory"
    arr[start:stop] = value


def write_through_views(column, rows):
    column[:] = -1.0  # a strided view of a 2-d array
    rows[...] = 7  # a reversed slice


def make_own_shared_array(results):
    a = SharedArray(1000, np.int64)
    a[:] = 5
    results.put((os.getpid(), len(own_segments())))


def work_on_payload(payload, arena_name, results):
    # As a pool worker: unpack the arguments zero-copy, pack a result into the same arena.
    arena = Arena.attach(arena_name)
    args = wire.unpack(payload, arena)
    x = args["x"]
    assert in_shared_memory(x, arena) and x.flags.writeable  # copy-on-write: a write stays here
    result = wire.pack({"doubled": x * 2, "first": x[:10].copy()}, arena)
    x[:] = -1.0
    assert wire.is_packed(result)
    results.put(result)


# --- SharedArray ---------------------------------------------------------------


def test_a_spawned_child_writes_a_slice_and_the_parent_sees_it(arena):
    a = SharedArray(1_000_000, np.float64, arena=arena)
    assert in_shared_memory(a, arena) and a.flags.writeable
    assert float(a.sum()) == 0.0  # zero-filled
    assert len(pickle.dumps(a)) < 1000  # by reference, whatever the size
    run_child(write_slice, a, 1000, 2000, 3.5)
    assert (a[1000:2000] == 3.5).all()
    assert a[:1000].sum() == 0 and a[2000:].sum() == 0
    _, block = block_of(a)
    assert arena.refcount(block) == 1  # the child let go of its reference when it exited
    a.close()
    assert arena.used_bytes() == 0


def test_views_travel_with_their_offsets_and_strides(arena):
    a = SharedArray((300, 400), np.float64, arena=arena, order="F")
    assert a.flags.f_contiguous
    column = a[:, 7]
    rows = a[200:100:-1, ::3]
    assert isinstance(column, SharedArray) and isinstance(rows, SharedArray)
    run_child(write_through_views, column, rows)
    assert (a[:, 7][:100] == -1.0).all()
    expected = np.zeros((300, 400))
    expected[:, 7] = -1.0
    expected[200:100:-1, ::3] = 7
    assert np.array_equal(np.asarray(a), expected)


def test_a_child_s_default_arena_is_gone_when_it_exits():
    results = spawn.Queue()
    run_child(make_own_shared_array, results)
    pid, names_while_alive = results.get(timeout=10)
    assert names_while_alive >= 2  # control and one segment
    assert shoal_segments_of(pid) == set()


def test_share_copies_once_keeping_dtype_shape_and_order(arena):
    src = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    a = share(src, arena=arena)
    assert isinstance(a, SharedArray) and a.dtype == src.dtype and a.shape == src.shape
    assert a.flags.f_contiguous
    assert np.array_equal(a, src) and in_shared_memory(a, arena)
    a[0, 0, 0] = 99
    assert src[0, 0, 0] == 0
    back = pickle.loads(pickle.dumps(a))
    assert back[0, 0, 0] == 99 and in_shared_memory(back, arena)
    back[1, 1, 1] = -5
    assert a[1, 1, 1] == -5  # the same memory


def test_default_arena_is_used_without_one():
    a = share(np.arange(10.0))
    assert a.arena is shared.default_arena() or a.arena.name == shared.default_arena().name
    assert in_shared_memory(a)


def test_results_and_copies_are_ordinary_arrays_pickled_by_value(arena):
    a = SharedArray(10, arena=arena)
    assert type(a + 1) is np.ndarray
    assert isinstance(a.sum(), np.floating)
    c = a.copy()
    assert not in_shared_memory(c, arena)
    back = pickle.loads(pickle.dumps(c))
    assert type(back) is np.ndarray and np.array_equal(back, c)


def test_close_refuses_while_views_live_then_frees(arena):
    a = SharedArray(1000, arena=arena)
    s = a[10:20]
    with pytest.raises(BufferError):
        a.close()
    m = memoryview(shared._view_of(a))
    del s
    with pytest.raises(BufferError):
        a.close()
    m.release()
    a.close()
    a.close()  # idempotent
    assert a.closed and not a.flags.writeable
    assert arena.used_bytes() == 0
    with pytest.raises(ValueError):
        pickle.dumps(a)
    with SharedArray(10, arena=arena) as b:
        b[:] = 1
    assert b.closed and arena.used_bytes() == 0


def test_unpickling_after_the_sender_freed_it_fails_clearly(arena):
    a = SharedArray(100, arena=arena)
    data = pickle.dumps(a)
    a.close()
    with pytest.raises(ValueError, match="freed before it arrived"):
        pickle.loads(data)


def test_object_dtype_is_refused(arena):
    with pytest.raises(TypeError, match="Python objects"):
        SharedArray(3, dtype=object, arena=arena)


def test_threads_allocate_and_free_concurrently(arena):
    errors = []

    def work(k):
        try:
            for i in range(200):
                a = SharedArray(1000 + i, np.int32, arena=arena)
                a[:] = k
                assert (a == k).all()
                del a
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    gc.collect()
    assert arena.used_bytes() == 0


# --- pack / unpack ---------------------------------------------------------------

DTYPES = [
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128,
    "datetime64[ns]", "timedelta64[s]", "S7", "U5", ">i4", "<f8",
    [("a", "i4"), ("b", "f8"), ("c", "S3")],
]
SHAPES = [(), (0,), (1,), (3, 0, 2), (70_000,), (300, 400), (20, 30, 40)]


def sample(dtype, shape, order="C"):
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.random.default_rng(n).integers(0, 250, size=n * dtype.itemsize, dtype=np.uint8)
    arr = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
    return np.array(arr, order=order)  # writable, in the order asked


def same(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_and_shape_round_trips_exactly(arena, dtype):
    arrays = [sample(dtype, shape) for shape in SHAPES]
    arrays.append(sample(dtype, (250, 300), order="F"))
    payload = wire.pack(arrays, arena)
    back = wire.unpack(payload, arena)
    for x, y in zip(arrays, back):
        assert same(x, y), (dtype, x.shape)
        assert y.flags.f_contiguous == x.flags.f_contiguous or x.ndim < 2
        # numpy pickles datetime and timedelta arrays in-band (no buffer protocol for them).
        big = x.nbytes >= wire.DEFAULT_THRESHOLD and x.dtype.kind not in "mM"
        assert in_shared_memory(y, arena) == big, (dtype, x.shape)
        if big:
            assert y.flags.writeable  # a private copy-on-write view, as a pickle's copy would be
    del back, x, y
    wire.release(payload, arena)
    gc.collect()
    assert arena.used_bytes() == 0


def test_unpacked_arrays_are_writable_copy_on_write_views(arena):
    x = np.arange(100_000, dtype=np.float64)
    payload = wire.pack({"x": x}, arena)
    assert len(payload) < 1000  # the 800 kB went to the arena
    y = wire.unpack(payload, arena)["x"]
    assert np.array_equal(x, y) and in_shared_memory(y, arena)
    assert shared.arena_of(y).name == arena.name
    view = shared._view_of(y)
    assert view.copy_on_write and not view.readonly
    assert y.flags.writeable
    # A second unpack of the payload: the same block, a mapping of its own.
    z = wire.unpack(payload, arena)["x"]
    assert shared._view_of(z).block == view.block
    assert z.__array_interface__["data"][0] != y.__array_interface__["data"][0]
    y[0] = -1.0
    np.add(y, 1, out=y)
    y.sort()
    mv = memoryview(view)
    assert not mv.readonly
    mv[8:16] = b"\0" * 8
    mv.release()
    assert y[1] == 0.0 and y[0] == 0.0
    # Nothing written reached the block: the other view and a new one see the original.
    assert np.array_equal(z, x)
    assert np.array_equal(wire.unpack(payload, arena)["x"], x)
    assert np.array_equal(x, np.arange(100_000, dtype=np.float64))
    with pytest.raises(ValueError, match="copy-on-write"):
        view.descriptor()  # its bytes are this process's own: no sending by reference
    assert pickle.loads(pickle.dumps(view)) == bytearray(memoryview(view))  # by value instead
    del y, z, view
    gc.collect()
    assert arena.used_bytes() > 0  # the payload still holds it
    wire.release(payload, arena)
    assert arena.used_bytes() == 0


def test_small_non_contiguous_and_object_arrays_stay_in_band(arena):
    big = np.arange(200_000, dtype=np.int64)
    obj = np.array([{"a": 1}, "text", None, 3.5] * 1000, dtype=object)
    things = {"small": np.arange(10), "strided": big[::3], "object": obj, "bytes": b"x" * 100_000}
    payload = wire.pack(things, arena)
    assert not wire.is_packed(payload)  # nothing went out of band: a plain pickle
    back = wire.unpack(payload, arena)
    assert np.array_equal(back["strided"], big[::3]) and back["strided"].flags.writeable
    assert list(back["object"]) == list(obj)
    assert back["bytes"] == things["bytes"]
    assert arena.used_bytes() == 0


def test_adopted_payloads_are_freed_when_the_objects_die(arena):
    x = np.ones((512, 512))
    b = np.arange(30_000, dtype=np.int32)
    payload = wire.pack((x, b), arena)
    assert len(wire.blocks(payload)) == 2
    y, c = wire.unpack(payload, arena, adopt=True)
    assert np.array_equal(x, y) and np.array_equal(b, c)
    assert arena.refcount(shared._view_of(y).block) == 1  # took over the payload's reference
    del y
    gc.collect()
    assert arena.used_bytes() > 0
    del c
    gc.collect()
    assert arena.used_bytes() == 0


def test_a_shared_array_in_a_payload_travels_by_reference_and_is_kept_alive(arena):
    a = SharedArray(500_000, np.int32, arena=arena)
    a[:] = 4
    payload = wire.pack({"a": a[100:], "x": np.zeros(100_000)}, arena)
    assert len(payload) < 2000
    address = a.__array_interface__["data"][0]
    del a
    gc.collect()  # the sender let go: the payload's reference keeps the memory
    got = wire.unpack(payload, arena, adopt=True)["a"]
    assert isinstance(got, SharedArray) and got.flags.writeable
    assert got.__array_interface__["data"][0] == address + 400
    assert (got == 4).all()
    got[:] = 9
    del got
    gc.collect()
    assert arena.used_bytes() == 0


def test_a_payload_can_name_blocks_of_another_arena(arena):
    other = Arena.create(limit=64 * MiB)
    try:
        a = SharedArray(10, arena=other)
        payload = wire.pack([a, np.zeros(20_000)], arena)
        names = {name for name, _ in wire.blocks(payload)}
        assert names == {arena.name, other.name}
        back = wire.unpack(payload, arena)
        back[0][:] = 1
        assert (a == 1).all()
        del back
        wire.release(payload, arena)
        del a
        gc.collect()
        assert other.used_bytes() == 0 and arena.used_bytes() == 0
    finally:
        other.close()


def test_a_tiny_limit_raises_memory_error_naming_sizes_and_the_remedy():
    arena = Arena.create(limit=MiB)
    try:
        with pytest.raises(MemoryError) as info:
            wire.pack(np.zeros(2 * MiB, dtype=np.uint8), arena)
        text = str(info.value)
        assert "2097152" in text and "1048576" in text and "shm_limit=" in text
        with pytest.raises(MemoryError):
            SharedArray((1024, 1024), np.float64, arena=arena)
        assert arena.used_bytes() == 0  # nothing half-made was left behind
        payload = wire.pack(np.ones(100_000, dtype=np.uint8), arena)  # still usable
        assert wire.unpack(payload, arena).sum() == 100_000
        wire.release(payload, arena)
        gc.collect()
        assert arena.used_bytes() == 0
    finally:
        arena.close()


def test_unpicklable_objects_raise_the_picklers_error_and_leak_nothing(arena):
    with pytest.raises(TypeError, match="cannot pickle"):
        wire.pack([np.zeros(100_000), threading.Lock()], arena)
    assert arena.used_bytes() == 0
    square = lambda v: v * v  # noqa: E731 - cloudpickle carries it
    payload = wire.pack((square, np.full(50_000, 3.0)), arena)
    fn, arr = wire.unpack(payload, arena)
    assert fn(arr)[0] == 9.0
    del fn, arr
    wire.release(payload, arena)
    gc.collect()
    assert arena.used_bytes() == 0


def test_everything_released_and_closed_leaves_no_names():
    before = own_segments()
    arena = Arena.create(limit=256 * MiB)
    keep = [SharedArray(n, arena=arena) for n in (10, 100_000, 5_000_000)]  # the last one is huge
    payloads = [wire.pack(np.arange(n, dtype=np.float64), arena) for n in (10_000, 3_000_000)]
    objs = [wire.unpack(p, arena) for p in payloads]
    assert len(own_segments() - before) >= 3
    for p in payloads:
        wire.release(p, arena)
    del keep, objs, payloads
    gc.collect()
    assert arena.used_bytes() == 0
    assert arena.check() == ""
    arena.close()
    assert shoal_segments_of() - before == set()
    del arena  # its handle kept a descriptor for private windows of the pooled segment
    gc.collect()
    assert own_segments() - before == set()


def test_a_spawned_worker_unpacks_arguments_and_packs_a_result(arena):
    x = np.arange(1_000_000, dtype=np.float64)
    payload = wire.pack({"x": x}, arena)
    results = spawn.Queue()
    run_child(work_on_payload, payload, arena.name, results)
    result = results.get(timeout=10)
    wire.release(payload, arena)  # the job is done: its arguments go
    back = wire.unpack(result, arena, adopt=True)
    assert np.array_equal(back["doubled"], x * 2) and in_shared_memory(back["doubled"], arena)
    assert np.array_equal(back["first"], x[:10])
    del back
    gc.collect()
    assert arena.used_bytes() == 0


def test_packing_into_a_closed_arena_says_so():
    arena = Arena.create(limit=64 * MiB)
    arena.close()
    with pytest.raises(ValueError, match="closed"):
        wire.pack(np.zeros(100_000), arena)
