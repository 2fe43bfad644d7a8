"""Scenario 3 (filters over one shared 100 MB image) warm and in rotation.

The full run times each library's first pool after the others ran, and on
this VM the first pool after a pause pays for fresh memory (a new process's
first filters take several times longer, whichever library draws them). This
times pool start + 20 filters per variant, after one warm-up run, ``--runs``
times in rotated order, and prints median, min and every run:

    PYTHONPATH=build/dev/pkg:. .venv/bin/python -m bench.warm_filters --runs 10

Variants: mp.Pool and ProcessPoolExecutor (fork, the image in the
initializer), shoal+fork (the same with shoal.Pool(start_method="fork")),
shoal+SA (``shoal.share(image)``, the copy inside the timing) and shoal's
natural ``map(f, [image] * n, ks)``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import statistics
import time
from typing import Callable

from . import work

WORKERS = 2
FILTERS = 20


def _mp_pool(image, ks) -> list:
    with mp.get_context("fork").Pool(WORKERS, initializer=work.set_image, initargs=(image,)) as pool:
        return pool.map(work.filter_global, ks, chunksize=1)


def _ppe(image, ks) -> list:
    with cf.ProcessPoolExecutor(WORKERS, mp_context=mp.get_context("fork"), initializer=work.set_image,
                                initargs=(image,)) as ex:
        return list(ex.map(work.filter_global, ks))


def _shoal_fork(image, ks) -> list:
    import shoal

    with shoal.Pool(WORKERS, start_method="fork", initializer=work.set_image, initargs=(image,)) as pool:
        return pool.map(work.filter_global, ks)


def _shoal_shared_array(image, ks) -> list:
    import shoal

    shared = shoal.share(image)
    try:
        with shoal.Executor(WORKERS) as ex:
            futures = [ex.submit(work.filter_shared_array, shared, k) for k in ks]
            return [f.result() for f in futures]
    finally:
        shared.close()


def _shoal_natural(image, ks) -> list:
    import shoal

    with shoal.Executor(WORKERS) as ex:
        return list(ex.map(work.filter_image, [image] * len(ks), ks))


VARIANTS: dict[str, Callable[..., list]] = {
    "mp.Pool": _mp_pool,
    "PPE": _ppe,
    "shoal+fork": _shoal_fork,
    "shoal+SA": _shoal_shared_array,
    "shoal (natural)": _shoal_natural,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per variant (default 10)")
    ap.add_argument("--side", type=int, default=5000, help="image side (default 5000: 100 MB of float32)")
    args = ap.parse_args()
    image = work.make_image(args.side)
    ks = list(range(FILTERS))
    expected = sorted(_mp_pool(image, ks))  # also the warm-up
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            out = VARIANTS[name](image, ks)
            times[name].append(time.perf_counter() - t0)
            if sorted(out) != expected:
                raise SystemExit(f"{name}: WRONG result")
    for name in names:
        v = [t * 1e3 for t in times[name]]
        print(f"{name:16} median {statistics.median(v):6.0f} ms  min {min(v):6.0f}  runs "
              + " ".join(f"{x:.0f}" for x in v))


if __name__ == "__main__":
    main()
