"""A lazy map input (a generator: no length) goes to the workers as each item
was when it was read, as the stdlib's ``imap`` pickles each item before it
reads the next: a generator that refills one buffer, updates one dict in place
or rotates two buffers must not have its items sent with the values of the
last one read, even when shoal puts many items in one chunk."""
import functools
import multiprocessing
import pickle
import threading

import numpy as np
import pytest

import shoal
import tasks
from shoal.wire.payload import FrozenItem, freeze_item

N = 300  # enough items for chunks of many


def refilled_list(n):
    buf = [0]
    for i in range(n):
        buf[0] = i
        yield buf  # the same object every time


def updated_dict(n):
    d = {"x": 0}
    for i in range(n):
        d["x"] = i
        yield d


def rotated_buffers(n):
    bufs = [[0], [0]]
    for i in range(n):
        bufs[i % 2][0] = i  # overwrites the one yielded two items ago
        yield bufs[i % 2]


class Box:
    def __init__(self):
        self.value = 0

    def __getitem__(self, i):
        return self.value


def refilled_object(n):
    box = Box()
    for i in range(n):
        box.value = i
        yield box


def refilled_small_array(n):
    buf = np.zeros(16)  # under the arena's threshold: it travels inside the pickle
    for i in range(n):
        buf[:] = i
        yield buf


def refilled_big_array(n):
    buf = np.zeros(256 * 1024 // 8)  # 256 KiB: it travels through the arena
    for i in range(n):
        buf[:] = i
        yield buf


GENERATORS = [refilled_list, updated_dict, rotated_buffers, refilled_object, refilled_small_array]


def value_of(item):
    return item["x"] if isinstance(item, dict) else float(item[0])


@pytest.mark.parametrize("start_method", ["forkserver", "inline"], ids=["workers", "serial"])
@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_pool_imap_of_a_generator_that_changes_its_items_gets_each_as_it_was_read(make, start_method, no_leaks):
    # "inline", the serial debug mode, runs chunks in the caller: the same items.
    with shoal.Pool(2, start_method=start_method) as pool:
        got = list(pool.imap(value_of, make(N)))
        unordered = sorted(pool.imap_unordered(value_of, make(N)))
    assert got == [float(i) for i in range(N)] or got == list(range(N))
    assert unordered == sorted(got)


def test_the_stdlib_imap_sees_the_same_items():
    # What the tests above hold shoal to: multiprocessing.Pool.imap itself.
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert list(pool.imap(value_of, refilled_list(50))) == list(range(50))
    with shoal.Pool(2) as pool:
        assert list(pool.imap(value_of, refilled_list(50))) == list(range(50))


def test_executor_map_over_lazy_iterables_gets_each_item_as_it_was_read(no_leaks):
    with shoal.Executor(2) as ex:
        assert list(ex.map(value_of, refilled_list(N))) == list(range(N))
        # zip() of two generators: each item is a tuple holding the changing list.
        assert list(ex.map(tasks.add, (i for i in range(N)), (x[0] for x in refilled_list(N)))) == [
            2 * i for i in range(N)
        ]
        assert list(ex.map(lambda a, b: a[0] + b, refilled_list(N), range(N))) == [2 * i for i in range(N)]


def test_a_big_array_refilled_by_a_generator_is_sent_with_each_items_data(no_leaks):
    with shoal.Pool(2) as pool:
        assert list(pool.imap(tasks.first_value, refilled_big_array(40))) == [float(i) for i in range(40)]


@pytest.mark.parametrize("lazy", [True, False], ids=["generator", "list"])
def test_items_that_cannot_be_pickled_fail_only_themselves_as_in_the_stdlib(lazy, no_leaks):
    def items():
        source = ([threading.Lock()] if i in (3, 7) else [i] for i in range(12))
        return source if lazy else list(source)

    def outcomes(results):
        out = []
        while True:
            try:
                out.append(next(results))
            except StopIteration:
                return out
            except TypeError:
                out.append("TypeError")

    with multiprocessing.get_context("fork").Pool(2) as pool:
        expected = outcomes(pool.imap(tasks.first_value, items()))
    with shoal.Pool(2) as pool:
        got = outcomes(pool.imap(tasks.first_value, items()))
    assert got == expected == [0, 1, 2, "TypeError", 4, 5, 6, "TypeError", 8, 9, 10, 11]


def test_items_a_dead_worker_did_not_finish_run_again_as_they_were_read(tmp_path, no_leaks):
    (tmp_path / "25.doomed").touch()  # the task of item 25 kills its worker, once
    task = functools.partial(tasks.kill_self_once_on_first, marker_dir=str(tmp_path))
    with shoal.Pool(2) as pool:
        got = list(pool.imap(task, refilled_list(N), retries=1))
    assert (tmp_path / "25.killed").exists()
    assert got == [2 * i for i in range(N)]


def test_a_map_given_a_chunksize_reads_its_chunk_then_sends_it_as_the_stdlib_does(no_leaks):
    # chunksize=k: the stdlib reads k items, then pickles them together (one
    # object refilled k times is k copies of the last value): shoal does the same.
    with multiprocessing.get_context("fork").Pool(2) as pool:
        expected = list(pool.imap(value_of, refilled_list(40), chunksize=8))
    with shoal.Pool(2) as pool:
        assert list(pool.imap(value_of, refilled_list(40), chunksize=8)) == expected


def test_freeze_item_keeps_immutable_items_copies_small_containers_and_pickles_the_rest():
    t = (1, "a", (2.0, None))
    assert freeze_item(7) == 7 and freeze_item(t) is t
    items = [1, 2]
    copy = freeze_item(items)
    assert copy == items and copy is not items
    nested = {"a": [1, 2], "b": (3, 4)}
    copy = freeze_item(nested)
    assert copy == nested and copy["a"] is not nested["a"]
    deeper = {"b": (3, [4])}  # past the copy's two levels: pickled
    assert pickle.loads(pickle.dumps(freeze_item(deeper))) == deeper
    box = Box()
    box.value = 5
    frozen = freeze_item(box)
    assert isinstance(frozen, FrozenItem)
    box.value = 6
    assert pickle.loads(pickle.dumps(frozen)).value == 5  # the worker gets the item as it was frozen
    small = np.arange(4.0)
    thawed = pickle.loads(pickle.dumps(freeze_item(small)))
    small[:] = 0
    assert list(thawed) == [0.0, 1.0, 2.0, 3.0]
    # For pack() itself, packed before the next item is read: a big buffer,
    # a SharedArray, what only cloudpickle pickles.
    assert freeze_item(np.zeros(1 << 17)) is None
    assert freeze_item(lambda: 1) is None
    shared = shoal.share(np.zeros(8))
    try:
        assert freeze_item([shared]) is None  # held by the payload that carries it
        assert freeze_item(shared) is shared  # shared by design: as it is
    finally:
        del shared


def test_a_lazy_map_of_shared_arrays_passes_them_by_reference():  # share(): the process-wide arena
    shared = shoal.share(np.arange(1000.0))
    try:
        with shoal.Pool(2) as pool:
            views = (shared[i:i + 10] for i in range(0, 1000, 10))
            assert list(pool.imap(tasks.first_value, views)) == [float(i) for i in range(0, 1000, 10)]
    finally:
        del shared
