import multiprocessing
import time

import pytest

import shoal
import tasks


@pytest.fixture
def pool(no_leaks):
    p = shoal.Pool(2)
    yield p
    p.terminate()
    p.join()


def test_apply_and_apply_async(pool):
    assert pool.apply(tasks.add, (1, 2)) == 3
    assert pool.apply(tasks.kwargs_echo, (1,), {"k": 2}) == ((1,), {"k": 2})
    r = pool.apply_async(tasks.square, (7,))
    assert r.get(timeout=30) == 49
    assert r.ready() and r.successful()


def test_map_starmap_and_their_async_forms(pool):
    assert pool.map(tasks.square, range(100)) == [x * x for x in range(100)]
    assert pool.map(tasks.square, iter(range(10))) == [x * x for x in range(10)]
    assert pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.map_async(tasks.square, range(10)).get(timeout=30) == [x * x for x in range(10)]
    assert pool.starmap_async(tasks.add, [(1, 1)]).get(timeout=30) == [2]
    assert pool.map(tasks.square, []) == []


def test_imap_is_ordered_and_imap_unordered_returns_everything(pool):
    assert list(pool.imap(tasks.square, range(50))) == [x * x for x in range(50)]
    assert list(pool.imap(tasks.square, range(50), chunksize=5)) == [x * x for x in range(50)]
    assert sorted(pool.imap_unordered(tasks.square, range(50))) == sorted(x * x for x in range(50))


def test_imap_next_with_timeout(pool):
    it = pool.imap(tasks.sleep_then, [1])  # sleep_then needs 2 args: fails fast, not a hang
    with pytest.raises(TypeError):
        it.next(timeout=30)
    slow = pool.imap(tasks.identity, iter([]))
    with pytest.raises(StopIteration):
        slow.next(timeout=5)


def test_imap_raises_at_the_failing_item_and_goes_on(pool):
    it = pool.imap(tasks.fail_on, range(6))
    got = []
    for _ in range(6):
        try:
            got.append(next(it))
        except ValueError:
            got.append("error")
    assert got == [0, 1, 2, "error", 4, 5]


def test_map_raises_the_first_exception(pool):
    with pytest.raises(ValueError, match="bad item 3"):
        pool.map(tasks.fail_on, range(10))
    assert pool.map(tasks.square, [3]) == [9]  # the pool still works


def test_async_result_timeout_and_successful(pool):
    r = pool.apply_async(tasks.sleep_then, (1, 1.0))
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(ValueError):
        r.successful()
    r.wait(timeout=30)
    assert r.ready() and r.get() == 1
    failing = pool.apply_async(tasks.fail_on, (3,))
    failing.wait(30)
    assert not failing.successful()


def test_callbacks_and_error_callbacks(pool):
    got, errors = [], []
    pool.apply_async(tasks.square, (4,), callback=got.append).wait(30)
    pool.apply_async(tasks.fail_on, (3,), error_callback=errors.append).wait(30)
    pool.map_async(tasks.square, range(3), callback=got.append).wait(30)
    assert got == [16, [0, 1, 4]]
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_a_failing_callback_is_reported_and_get_still_returns(pool, capsys):
    def explode(value):
        raise RuntimeError("callback exploded")

    assert pool.apply_async(tasks.square, (5,), callback=explode).get(timeout=30) == 25
    assert pool.apply_async(tasks.square, (6,)).get(timeout=30) == 36  # the pool goes on
    assert "callback exploded" in capsys.readouterr().err


def test_close_and_join(no_leaks):
    p = shoal.Pool(2)
    results = [p.apply_async(tasks.sleep_then, (i, 0.05)) for i in range(4)]
    with pytest.raises(ValueError, match="still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="not running"):
        p.apply_async(tasks.square, (1,))
    p.join()
    assert [r.get(timeout=1) for r in results] == list(range(4))


def test_context_manager_terminates(no_leaks):
    started, never = shoal.Semaphore(0), shoal.Event()
    with shoal.Pool(2) as p:
        assert p.map(tasks.square, range(5)) == [0, 1, 4, 9, 16]
        r = p.apply_async(tasks.signal_then_wait_for_event, (started, never))  # would run for 60 s
        assert started.acquire(timeout=60)  # it runs when the block ends
    r.wait(30)
    assert r.ready() and not r.successful()  # terminated, not finished


def test_initializer_and_maxtasksperchild(no_leaks):
    with shoal.Pool(1, initializer=tasks.remember, initargs=("k", 42), maxtasksperchild=2) as p:
        pids = [p.apply(tasks.worker_id_and_pid)[1] for _ in range(6)]
        assert p.map(tasks.recall, ["k"] * 4, chunksize=1) == [42] * 4
    assert len(set(pids)) == 3


def test_progress_bar_counts_every_item(pool, capsys):
    assert pool.map(tasks.square, range(40), progress=True) == [x * x for x in range(40)]
    assert list(pool.imap(tasks.square, range(40), progress=True)) == [x * x for x in range(40)]
    err = capsys.readouterr().err
    assert "40/40" in err


def test_invalid_arguments(no_leaks):
    with pytest.raises(ValueError):
        shoal.Pool(-1)
    with shoal.Pool(1) as p:
        with pytest.raises(ValueError):
            p.imap(tasks.square, range(3), chunksize=0)


def test_a_busy_worker_keeps_freed_heap_memory_for_reuse_and_gives_it_back_when_idle(no_leaks):
    with shoal.Pool(1) as pool:
        # Many small objects built and freed: their arenas stay in the worker...
        assert pool.apply(tasks.churn_heap_then_report, (300_000,)) > 0
        # ...until it has waited for work a while.
        deadline = time.monotonic() + 10
        while pool.apply(tasks.heap_cache_bytes) != 0:
            assert time.monotonic() < deadline, "an idle worker kept its cached heap arenas"
            time.sleep(0.3)


def test_pool_has_the_executors_stats(no_leaks):
    with shoal.Pool(2) as pool:
        assert pool.map(tasks.square, range(10)) == [x * x for x in range(10)]
        stats = pool.stats()
    assert stats.submitted >= 1 and stats.completed == stats.submitted, stats
    assert stats.workers_started == 2 and stats.arena_used_bytes == 0, stats
    assert stats.kind == "Pool" and stats.tasks_completed == 10, stats
