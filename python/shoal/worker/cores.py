"""A worker's share of the machine's cores: no oversubscription by default.

A worker that runs numpy code would start as many BLAS/OpenMP threads as the
machine has cores, in every worker: N workers x N threads fighting for N
cores. As joblib's loky backend does, each worker's libraries get its share:

    parent (PoolOptions)              cores_config(): workers, CPUs available,
        |                             inner_max_num_threads, cpu_affinity sets,
        |                             the thread variables the user set
        v
    fork server / fresh interpreter   prepare(): the variables (OMP_NUM_THREADS,
        |                             ...) before numpy is imported; the loaded
        |                             libraries' own set-threads calls for those a
        |                             forked server inherited (limit_native_threads)
        v
    each worker                       claim(): pins itself to its cpu_affinity set,
                                      its own limit if that set differs, and the
                                      cores it owns for pools started in its tasks

If the user set any of the variables, the threads are theirs to choose:
nothing is changed unless ``inner_max_num_threads`` is given.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ..runtime import options as _options

#: The thread-count variables of the common native thread pools.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# The limit this process's fork server applied (so a worker with the same
# share skips limiting again): None until prepare() ran.
_applied: Optional[int] = None


def cores_config(opts: _options.PoolOptions) -> dict[str, Any]:
    """What the workers need to take their share (JSON-able: it travels in argv)."""
    return {
        "workers": opts.workers,
        "available": _options.default_workers(),  # inside a worker: the cores it owns
        "threads": opts.inner_max_num_threads,
        "cpus": [list(s) for s in opts.cpu_affinity] if opts.cpu_affinity else None,
        "user_env": [name for name in THREAD_ENV if name in os.environ],
    }


def _share(cores: dict[str, Any], slot: Optional[int]) -> int:
    """The cores a worker owns: its cpu_affinity set, or the CPUs divided by the workers."""
    cpus = cores["cpus"]
    if cpus and slot is not None:
        return len(cpus[slot % len(cpus)])
    if cpus and len(cpus) == 1:
        return len(cpus[0])
    available: int = cores["available"]
    workers: int = cores["workers"]
    return max(1, available // max(1, workers))


def _limit(cores: dict[str, Any], threads: int) -> None:
    global _applied
    if cores["threads"] is None and cores["user_env"]:
        return  # the user chose the threads (OpenBLAS reads OMP_NUM_THREADS too): left alone
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    if _applied == threads:
        return  # already in place (the fork server did it)
    _applied = threads
    from .. import _core

    _core.limit_native_threads(threads)  # those loaded before the variables were set (a forked server)


def prepare(config: dict[str, Any]) -> None:
    """In a fork server or a fresh interpreter, before user code: the default share."""
    cores = config.get("cores")
    if cores:
        _limit(cores, cores["threads"] or _share(cores, None))


def claim(config: dict[str, Any], slot: int) -> None:
    """In a worker, before its initializer: its CPUs, thread limit and core count."""
    from .. import _core

    cores = config.get("cores")
    if not cores:
        return
    cpus = cores["cpus"]
    if cpus:
        _core.set_cpu_affinity(cpus[slot % len(cpus)])
    owned = _share(cores, slot)
    _options._worker_cores = owned
    _limit(cores, cores["threads"] or owned)
