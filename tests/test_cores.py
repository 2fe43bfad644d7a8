"""Cores without oversubscription (issue 13, item 6): each worker's BLAS and
OpenMP pools get its share of the cores (loky's default), unless the user set
the thread variables or asked for another limit; cpu_affinity= pins workers;
a pool started inside a task defaults to the cores of its worker. On both
surfaces and every start method."""
import os

import numpy  # noqa: F401 - loaded here first: forked workers inherit its BLAS already started
import pytest

import cores_tasks as ct
import shoal

START_METHODS = ["forkserver", "fork", "spawn"]
CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


@pytest.fixture(params=["executor", "pool"])
def surface(request):
    return request.param


def _seen_by_every_worker(surface, start_method, workers, **kw):
    """What each worker (by pid) reports; tasks until every worker has answered."""
    found = {}
    if surface == "executor":
        pool = shoal.Executor(workers, start_method=start_method, **kw)
        run = lambda n: list(pool.map(ct.seen, range(n), chunksize=1))  # noqa: E731
    else:
        pool = shoal.Pool(workers, start_method=start_method, **kw)
        run = lambda n: pool.map(ct.seen, range(n), chunksize=1)  # noqa: E731
    try:
        for _ in range(50):
            for pid, cpus, env, pools in run(4 * workers):
                found[pid] = (cpus, env, pools)
            if len(found) == workers:
                return found
        raise AssertionError(f"only {len(found)} of {workers} workers answered")
    finally:
        if surface == "executor":
            pool.shutdown()
        else:
            pool.terminate()
            pool.join()


def _blas_threads(pools):
    return {n for api, n in pools if api in ("openblas", "mkl", "blis")}


@pytest.mark.parametrize("workers", [1, 2])
def test_each_worker_gets_its_share_of_the_cores(surface, start_method, workers, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    share = max(1, len(CPUS) // workers)
    for cpus, env, pools in _seen_by_every_worker(surface, start_method, workers).values():
        assert env == {"OMP_NUM_THREADS": str(share), "OPENBLAS_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}
        assert _blas_threads(pools) == {share}, pools
        assert cpus == CPUS  # not pinned unless asked


def test_inner_max_num_threads_sets_the_limit(surface, start_method, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # an explicit limit wins over the user's variables
    for _, env, pools in _seen_by_every_worker(surface, start_method, 1, inner_max_num_threads=1).values():
        assert env["OMP_NUM_THREADS"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"
        assert _blas_threads(pools) == {1}, pools


def test_thread_variables_the_user_set_are_kept(surface, start_method, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    for _, env, _ in _seen_by_every_worker(surface, start_method, 2).values():
        # Untouched: OpenBLAS reads OMP_NUM_THREADS when OPENBLAS_NUM_THREADS is unset.
        assert env["OMP_NUM_THREADS"] == "3" and env["OPENBLAS_NUM_THREADS"] is None


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning to distinct CPUs needs two")
def test_spread_pins_each_worker_to_one_cpu_of_its_own(surface, start_method):
    seen = _seen_by_every_worker(surface, start_method, 2, cpu_affinity="spread")
    sets = sorted(cpus for cpus, _, _ in seen.values())
    assert sets == [[CPUS[0]], [CPUS[1]]]
    for cpus, env, pools in seen.values():
        assert env["OMP_NUM_THREADS"] == "1" and _blas_threads(pools) == {1}  # the cores it owns


def test_cpu_affinity_lists_per_worker_or_for_all(surface, start_method):
    one = [[CPUS[-1]]]
    for cpus, _, _ in _seen_by_every_worker(surface, start_method, 2, cpu_affinity=one).values():
        assert cpus == [CPUS[-1]]
    per_worker = [CPUS[0], CPUS]  # a CPU, or a list of CPUs, per worker
    sets = sorted(c for c, _, _ in _seen_by_every_worker(surface, start_method, 2, cpu_affinity=per_worker).values())
    assert sets == sorted([[CPUS[0]], CPUS])


def test_a_pool_inside_a_task_defaults_to_its_workers_cores(start_method):
    with shoal.Executor(2, start_method=start_method) as ex:
        sizes = set(ex.map(ct.nested_pool_size, range(2)))
    assert sizes == {max(1, len(CPUS) // 2)}


@pytest.mark.parametrize(
    "kw, error",
    [
        (dict(cpu_affinity=[10_000]), ValueError),  # a CPU this process may not use
        (dict(cpu_affinity=[[CPUS[0]]] * 3), ValueError),  # neither one entry nor one per worker
        (dict(cpu_affinity="everywhere"), TypeError),
        (dict(cpu_affinity=[[]]), TypeError),
        (dict(cpu_affinity=["0"]), TypeError),
        (dict(inner_max_num_threads=0), ValueError),
        (dict(inner_max_num_threads="2"), TypeError),
    ],
)
def test_bad_core_settings_are_refused_clearly(surface, kw, error):
    make = shoal.Executor if surface == "executor" else shoal.Pool
    with pytest.raises(error):
        make(2, **kw)
