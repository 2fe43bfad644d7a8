"""One adapter per library, each used with its defaults, the same worker
count, and its documented best practice where the scenario calls for one.

An adapter has a *session* (what a program sets up once: ``ray.init``, a Dask
``LocalCluster``; nothing for the process pools) and opens *pools* in it. A
pool offers the operations the scenarios are written in:

* ``submit_all(fn, args)``: one task per argument, results in completion order
  (``submit`` + ``as_completed`` where the library has futures);
* ``map(fn, items)``: the library's own map, its default chunking, results in order;
* ``call(fn, x)``: one task, waiting for its result (a round trip).

Scenarios that need sharing or worker state (3, 4, 5) call adapter methods
that each library implements in its own idiom (see ``share_filters``,
``count_prefixes``, ``evaluate_table``).
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import shutil
import tempfile
import threading
from typing import Any, Callable, Iterable, Optional

from . import work

STDLIB = ("multiprocessing.Pool", "ProcessPoolExecutor")


class Unsupported(Exception):
    """The library has no way to express this operation (reported as n/a)."""


def _iter_chunks(items: list, n_chunks: int) -> list:
    size = max(1, -(-len(items) // n_chunks))
    return [items[i:i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------
# The adapter base: sessions, pools, and the default (initializer-based) idioms
# ---------------------------------------------------------------------------


class Adapter:
    name = "?"
    module = ""  # imported to tell "missing" from present
    has_futures = True
    #: state set up by an initializer is part of creating the pool (so scenarios
    #: 3-5 time pool creation for these); False: state is set up inside a session.
    pools_carry_state = True

    def __init__(self, workers: int) -> None:
        self.workers = workers

    @classmethod
    def version(cls) -> str:
        mod = importlib.import_module(cls.module.split(".")[0])
        return getattr(mod, "__version__", "")

    def session_start(self) -> None:
        pass

    def session_stop(self) -> None:
        pass

    def open(self, initializer: Optional[Callable[..., Any]] = None, initargs: tuple = ()) -> "PoolHandle":
        raise NotImplementedError

    # scenario 3: the same image for every task
    def share_filters(self, image, ks: list) -> list:
        """Default: the image goes to each worker once through the pool's initializer."""
        with self.open(work.set_image, (image,)) as pool:
            return pool.map(work.filter_global, ks)

    # scenario 4: worker-local counts, merged at the end
    def count_prefixes(self, docs: list) -> list:
        """Default: counts in a global set up by the initializer; one flush per
        worker at the end (a file barrier makes sure each worker gets exactly one)."""
        with self.open(work.init_counts) as pool:
            pool.map(work.count_doc, docs)
            return self._flush(pool)

    def _flush(self, pool: "PoolHandle") -> list:
        barrier = tempfile.mkdtemp(prefix="bench-barrier-")
        try:
            return pool.flush_each_worker(work.flush_counts, (barrier, self.workers))
        finally:
            shutil.rmtree(barrier, ignore_errors=True)

    # scenario 5: an expensive object built once per worker
    def evaluate_table(self, n: int, seeds: list) -> list:
        with self.open(work.init_table, (n,)) as pool:
            return pool.map(work.evaluate, seeds)


class PoolHandle:
    def __enter__(self) -> "PoolHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def submit_all(self, fn: Callable[[Any], Any], args: Iterable[Any]) -> list:
        raise Unsupported("no futures")

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], x: Any) -> Any:
        raise NotImplementedError

    def flush_each_worker(self, fn: Callable[..., Any], args: tuple) -> list:
        """Runs fn(*args) once in each worker (fn itself makes sure of 'each')."""
        return self.submit_all(_Star(fn, args), [None] * self.workers)


class _Star:
    """Picklable ``lambda _: fn(*args)``."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args

    def __call__(self, _: Any) -> Any:
        return self.fn(*self.args)


# ---------------------------------------------------------------------------
# serial: the reference
# ---------------------------------------------------------------------------


class Serial(Adapter):
    name = "serial"
    module = "builtins"

    @classmethod
    def version(cls) -> str:
        return ""

    def open(self, initializer=None, initargs=()):
        if initializer is not None:
            initializer(*initargs)
        return _SerialPool()

    def share_filters(self, image, ks):
        return [work.filter_image(image, k) for k in ks]

    def count_prefixes(self, docs):
        work.init_counts()
        for d in docs:
            work.count_doc(d)
        return [work.take_counts()]


class _SerialPool(PoolHandle):
    workers = 1

    def submit_all(self, fn, args):
        return [fn(a) for a in args]

    def map(self, fn, items):
        return [fn(x) for x in items]

    def call(self, fn, x):
        return fn(x)


# ---------------------------------------------------------------------------
# Executors with futures: shoal, ProcessPoolExecutor, loky
# ---------------------------------------------------------------------------


class _FuturesPool(PoolHandle):
    def __init__(self, executor: Any, workers: int) -> None:
        self.ex = executor
        self.workers = workers

    def close(self) -> None:
        self.ex.shutdown(wait=True)

    def submit_all(self, fn, args):
        futs = [self.ex.submit(fn, a) for a in args]
        return [f.result() for f in cf.as_completed(futs)]

    def map(self, fn, items):
        return list(self.ex.map(fn, items))

    def call(self, fn, x):
        return self.ex.submit(fn, x).result()


class Shoal(Adapter):
    name = "shoal"
    module = "shoal"

    def open(self, initializer=None, initargs=()):
        import shoal

        return _FuturesPool(shoal.Executor(self.workers, initializer=initializer, initargs=initargs), self.workers)

    def share_filters(self, image, ks):
        # No SharedArray, the natural code: the same image in every item of
        # one map. shoal copies it into its shared-memory arena once for the
        # map (not once per task) and each task maps it.
        with self.open() as pool:
            return list(pool.ex.map(work.filter_image, [image] * len(ks), ks))


class ShoalSharedArray(Shoal):
    """shoal with the image in a ``shoal.SharedArray`` (only when shoal has one)."""

    name = "shoal+SharedArray"

    @classmethod
    def available(cls) -> bool:
        import shoal

        return hasattr(shoal, "SharedArray")

    def share_filters(self, image, ks):
        import numpy as np
        import shoal

        if hasattr(shoal, "share"):
            shared = shoal.share(image)  # one copy into shared memory; tasks get references
        else:
            shared = shoal.SharedArray(image.shape, image.dtype)
            np.asarray(shared)[...] = image
        try:
            with self.open() as pool:
                futs = [pool.ex.submit(work.filter_shared_array, shared, k) for k in ks]
                return [f.result() for f in futs]
        finally:
            if hasattr(shared, "close"):
                shared.close()


class ShoalFork(Shoal):
    """shoal.Pool with ``start_method="fork"`` and the image in the
    initializer, as multiprocessing users write it (only scenario 3)."""

    name = "shoal+fork"

    def share_filters(self, image, ks):
        import shoal

        with shoal.Pool(self.workers, work.set_image, (image,), start_method="fork") as pool:
            return pool.map(work.filter_global, ks)


class ProcessPoolExecutor(Adapter):
    name = "ProcessPoolExecutor"
    module = "concurrent.futures"

    @classmethod
    def version(cls) -> str:
        import sys

        return "Python %d.%d.%d" % sys.version_info[:3]

    def open(self, initializer=None, initargs=()):
        return _FuturesPool(cf.ProcessPoolExecutor(self.workers, initializer=initializer, initargs=initargs), self.workers)


class Loky(Adapter):
    name = "loky"
    module = "loky"

    def open(self, initializer=None, initargs=()):
        import loky

        ex = loky.get_reusable_executor(max_workers=self.workers, initializer=initializer, initargs=initargs)
        return _FuturesPool(ex, self.workers)


# ---------------------------------------------------------------------------
# multiprocessing.Pool and mpire (apply_async + callbacks, no futures)
# ---------------------------------------------------------------------------


class _CallbackCollector:
    def __init__(self, n: int) -> None:
        self.results: list = []
        self.error: Optional[BaseException] = None
        self.n = n
        self.done = threading.Event()
        if n == 0:
            self.done.set()

    def ok(self, value: Any) -> None:
        self.results.append(value)
        if len(self.results) == self.n:
            self.done.set()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.done.set()

    def wait(self) -> list:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.results


class _MpPool(PoolHandle):
    def __init__(self, pool: Any, workers: int) -> None:
        self.pool = pool
        self.workers = workers

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def submit_all(self, fn, args):
        args = list(args)
        col = _CallbackCollector(len(args))
        for a in args:
            self.pool.apply_async(fn, (a,), callback=col.ok, error_callback=col.fail)
        return col.wait()

    def map(self, fn, items):
        return self.pool.map(fn, items)

    def call(self, fn, x):
        return self.pool.apply(fn, (x,))


class MultiprocessingPool(Adapter):
    name = "multiprocessing.Pool"
    module = "multiprocessing"
    has_futures = False  # submit_all uses apply_async + callbacks

    @classmethod
    def version(cls) -> str:
        import multiprocessing

        return "start method " + multiprocessing.get_start_method()

    def open(self, initializer=None, initargs=()):
        import multiprocessing

        return _MpPool(multiprocessing.Pool(self.workers, initializer, initargs), self.workers)


class _MpirePool(PoolHandle):
    def __init__(self, workers: int, initializer, initargs, **pool_kwargs: Any) -> None:
        import functools

        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=workers, **pool_kwargs)
        self.workers = workers
        self.init = functools.partial(initializer, *initargs) if initializer is not None else None

    def close(self) -> None:
        self.pool.stop_and_join()

    def _applying(self) -> None:
        self.applied = True

    def submit_all(self, fn, args):
        self._applying()
        args = list(args)
        col = _CallbackCollector(len(args))
        for a in args:
            self.pool.apply_async(fn, (a,), callback=col.ok, error_callback=col.fail, worker_init=self.init)
        return col.wait()

    def map(self, fn, items):
        if getattr(self, "applied", False):
            # mpire 2.10: a map on workers that ran apply_async calls fn with the
            # wrong arguments; start fresh workers (not timed separately).
            self.pool.stop_and_join()
            self.applied = False
        # mpire unpacks each item into arguments: wrap them (its documented way
        # to pass one argument that is itself a sequence).
        return self.pool.map(fn, [(x,) for x in items], worker_init=self.init)

    def call(self, fn, x):
        self._applying()
        return self.pool.apply(fn, (x,), worker_init=self.init)


class Mpire(Adapter):
    name = "mpire"
    module = "mpire"
    has_futures = False

    def open(self, initializer=None, initargs=()):
        return _MpirePool(self.workers, initializer, initargs)

    def share_filters(self, image, ks):
        # mpire's documented way: shared_objects (copy-on-write through fork).
        with _MpirePool(self.workers, None, (), shared_objects=image) as pool:
            return pool.pool.map(work.filter_shared_objects, [(k,) for k in ks])

    def count_prefixes(self, docs):
        # mpire's documented way: worker_state, and worker_exit whose results
        # come back through get_exit_results().
        with _MpirePool(self.workers, None, (), use_worker_state=True) as pool:
            pool.pool.map(work.mpire_count, [(d,) for d in docs], worker_exit=work.mpire_exit)
            return pool.pool.get_exit_results()

    def evaluate_table(self, n, seeds):
        import functools

        with _MpirePool(self.workers, None, (), use_worker_state=True) as pool:
            return pool.pool.map(work.mpire_evaluate, [(s,) for s in seeds],
                                 worker_init=functools.partial(work.mpire_init_table, n=n))


# ---------------------------------------------------------------------------
# joblib (loky backend)
# ---------------------------------------------------------------------------


class _JoblibPool(PoolHandle):
    def __init__(self, workers: int, initializer, initargs) -> None:
        from joblib import Parallel

        self.workers = workers
        self.init = (initializer, tuple(initargs)) if initializer is not None else None
        # Reusing one Parallel object across calls is joblib's documented way
        # to pay for its set-up once.
        self.parallel = Parallel(n_jobs=workers)
        self.parallel.__enter__()

    def _wrap(self, fn):
        if self.init is None:
            return fn
        import functools

        return functools.partial(work.call_with_init, self.init[0], self.init[1], fn)

    def close(self) -> None:
        self.parallel.__exit__(None, None, None)

    def submit_all(self, fn, args):
        from joblib import Parallel, delayed

        f = self._wrap(fn)
        return list(Parallel(n_jobs=self.workers, return_as="generator_unordered")(delayed(f)(a) for a in args))

    def map(self, fn, items):
        from joblib import delayed

        f = self._wrap(fn)
        return self.parallel(delayed(f)(x) for x in items)

    def call(self, fn, x):
        from joblib import delayed

        return self.parallel([delayed(self._wrap(fn))(x)])[0]

    def flush_each_worker(self, fn, args):
        from joblib import Parallel, delayed

        # batch_size=1: joblib must not put two flushes in one batch.
        return Parallel(n_jobs=self.workers, batch_size=1)(delayed(fn)(*args) for _ in range(self.workers))


class Joblib(Adapter):
    name = "joblib"
    module = "joblib"
    has_futures = True  # return_as="generator_unordered" is its as_completed

    def open(self, initializer=None, initargs=()):
        return _JoblibPool(self.workers, initializer, initargs)

    def share_filters(self, image, ks):
        # joblib's documented way: pass the array; it memory-maps arrays over 1 MB.
        from joblib import Parallel, delayed

        return Parallel(n_jobs=self.workers)(delayed(work.filter_image)(image, k) for k in ks)

    def evaluate_table(self, n, seeds):
        # No initializer in joblib: build lazily in a global on first use.
        from joblib import Parallel, delayed

        return Parallel(n_jobs=self.workers)(delayed(work.evaluate_lazy)(n, s) for s in seeds)


# ---------------------------------------------------------------------------
# Dask distributed (LocalCluster, processes)
# ---------------------------------------------------------------------------


class _DaskPool(PoolHandle):
    def __init__(self, client: Any, workers: int) -> None:
        self.client = client
        self.workers = workers

    def submit_all(self, fn, args):
        from distributed import as_completed

        futs = [self.client.submit(fn, a, pure=False) for a in args]
        return [r for _, r in as_completed(futs, with_results=True)]

    def map(self, fn, items):
        # Dask's guidance is to avoid tiny tasks; batch like multiprocessing.Pool
        # (4 chunks per worker), one Dask task per chunk.
        chunks = _iter_chunks(list(items), 4 * self.workers)
        futs = self.client.map(work.apply_chunk, [fn] * len(chunks), chunks, pure=False)
        return [x for part in self.client.gather(futs) for x in part]

    def call(self, fn, x):
        return self.client.submit(fn, x, pure=False).result()


class Dask(Adapter):
    name = "dask"
    module = "distributed"
    pools_carry_state = False

    def session_start(self) -> None:
        import logging

        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=self.workers, threads_per_worker=1, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)

    def session_stop(self) -> None:
        self.client.close()
        self.cluster.close()

    def open(self, initializer=None, initargs=()):
        if initializer is not None:
            self.client.run(initializer, *initargs)  # once on every worker, now
        return _DaskPool(self.client, self.workers)

    def share_filters(self, image, ks):
        # Dask's documented way: scatter the large object once (to every worker).
        [img] = self.client.scatter([image], broadcast=True)
        futs = [self.client.submit(work.filter_image, img, k, pure=False) for k in ks]
        out = self.client.gather(futs)
        del img
        return out

    def count_prefixes(self, docs):
        self.client.run(work.init_counts)
        # batched as in map (Dask advises against small tasks)
        chunks = _iter_chunks(docs, 4 * self.workers)
        self.client.gather(self.client.map(work.count_docs, chunks, pure=False))
        return list(self.client.run(work.take_counts).values())  # every worker, once

    def evaluate_table(self, n, seeds):
        chunks = _iter_chunks(seeds, 4 * self.workers)
        futs = self.client.map(work.evaluate_many_lazy, [n] * len(chunks), chunks, pure=False)
        return [x for part in self.client.gather(futs) for x in part]


# ---------------------------------------------------------------------------
# Ray (local, dashboard off, small object store)
# ---------------------------------------------------------------------------

RAY_OBJECT_STORE_BYTES = 200 * 1024 * 1024


class _RayPool(PoolHandle):
    def __init__(self, workers: int, initializer, initargs) -> None:
        self.workers = workers
        self.init = (initializer, tuple(initargs)) if initializer is not None else None
        self._remote: dict = {}

    def _r(self, fn):
        import ray

        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = ray.remote(fn)
        return r

    def _wrap(self, fn):
        if self.init is None:
            return fn
        import functools

        key = ("wrapped", fn)
        if key not in self._remote:
            self._remote[key] = functools.partial(work.call_with_init, self.init[0], self.init[1], fn)
        return self._remote[key]

    def submit_all(self, fn, args):
        import ray

        rf = self._r(self._wrap(fn))
        pending = [rf.remote(a) for a in args]
        out: list = []
        while pending:  # as_completed, in batches so that it stays O(n)
            done, pending = ray.wait(pending, num_returns=min(len(pending), 256), timeout=0.05)
            out.extend(ray.get(done))
        return out

    def map(self, fn, items):
        import ray

        # Ray's guidance is to avoid over-fine tasks: batch, 4 chunks per worker.
        chunks = _iter_chunks(list(items), 4 * self.workers)
        rf = self._r(work.apply_chunk)
        f = self._wrap(fn)
        return [x for part in ray.get([rf.remote(f, c) for c in chunks]) for x in part]

    def call(self, fn, x):
        import ray

        return ray.get(self._r(self._wrap(fn)).remote(x))


class Ray(Adapter):
    name = "ray"
    module = "ray"
    pools_carry_state = False

    def session_start(self) -> None:
        import ray

        ray.init(
            num_cpus=self.workers, include_dashboard=False, object_store_memory=RAY_OBJECT_STORE_BYTES,
            log_to_driver=False, logging_level="ERROR",
        )

    def session_stop(self) -> None:
        import ray

        ray.shutdown()

    def open(self, initializer=None, initargs=()):
        return _RayPool(self.workers, initializer, initargs)

    def share_filters(self, image, ks):
        import ray

        # Ray's documented way: put the object once; numpy arrays are read zero-copy.
        ref = ray.put(image)
        rf = ray.remote(work.filter_image)
        out = ray.get([rf.remote(ref, k) for k in ks])
        del ref
        return out

    def _actors(self, cls, *args):
        import ray

        actor_cls = ray.remote(num_cpus=1)(cls)
        return [actor_cls.remote(*args) for _ in range(self.workers)]

    def count_prefixes(self, docs):
        import ray
        from ray.util import ActorPool

        # Ray's documented way to keep state: actors, one per worker.
        actors = self._actors(work.PrefixCounter)
        try:
            chunks = _iter_chunks(docs, 4 * self.workers)  # batched as in map
            list(ActorPool(actors).map_unordered(lambda a, c: a.count.remote(c), chunks))
            return ray.get([a.take.remote() for a in actors])
        finally:
            for a in actors:
                ray.kill(a)

    def evaluate_table(self, n, seeds):
        from ray.util import ActorPool

        import ray

        # Ray's documented way for expensive initialisation: actors.
        actors = self._actors(work.TableEvaluator, n)
        try:
            chunks = _iter_chunks(seeds, 4 * self.workers)  # batched as in map
            return [x for part in ActorPool(actors).map(lambda a, c: a.evaluate.remote(c), chunks) for x in part]
        finally:
            for a in actors:
                ray.kill(a)


ADAPTERS: dict[str, type] = {
    a.name: a
    for a in (Serial, Shoal, ShoalSharedArray, ShoalFork, MultiprocessingPool, ProcessPoolExecutor, Joblib, Loky, Mpire, Dask, Ray)
}
#: the libraries of a normal run, in table order (serial is the reference)
DEFAULT_LIBS = [
    "serial", "shoal", "shoal+SharedArray", "shoal+fork", "multiprocessing.Pool", "ProcessPoolExecutor",
    "joblib", "loky", "mpire", "dask", "ray",
]


def check_available(name: str) -> Optional[str]:
    """None if the library can be used; otherwise why not ('missing: ...')."""
    cls = ADAPTERS[name]
    try:
        importlib.import_module(cls.module)
    except Exception as exc:  # noqa: BLE001 - any import failure means missing
        return f"missing ({type(exc).__name__}: {exc})"
    if hasattr(cls, "available") and not cls.available():
        return "n/a (shoal has no SharedArray yet)"
    return None
