"""Tasks that report what a worker sees of its cores (tests/test_cores.py)."""
import os


def seen(_=None):
    """(pid, CPUs it may run on, thread variables, BLAS/OpenMP pools' thread counts)."""
    import numpy  # noqa: F401 - its BLAS must be loaded for threadpoolctl to see it
    from threadpoolctl import threadpool_info

    env = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
    return os.getpid(), sorted(os.sched_getaffinity(0)), env, pools


def nested_pool_size(_=None):
    """How many workers a pool started inside this task has by default (as
    multiprocessing.Pool, shoal's keeps the number in ``_processes``); it runs."""
    import shoal

    with shoal.Pool() as inner:
        assert inner.map(abs, range(-5, 5)) == [abs(x) for x in range(-5, 5)]
        return inner._processes
