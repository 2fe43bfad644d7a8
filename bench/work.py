"""The functions the benchmark's workers run.

They live in an importable module (not ``__main__``) so that every library,
whatever its start method (fork, forkserver, spawn, loky, Ray, Dask), can find
them by reference. Everything here is deterministic: a scenario's result in a
worker is bit-for-bit the result of the serial run, so correctness is checked
by comparing digests.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any, Callable, Optional

# -- 1, 2, (b), (c): tiny tasks ------------------------------------------------


def tiny(x: int) -> int:
    """A task of a few microseconds of pure-Python work."""
    s = x
    for i in range(40):
        s = (s * 31 + i) & 0xFFFFFFFF
    return s


def echo(x: int) -> int:
    return x + 1


def square(x: int) -> int:
    """The README's example task: next to nothing, so a map measures the pool."""
    return x * x


# -- (d), 6: busy waits ----------------------------------------------------------


def busy(seconds: float) -> float:
    """Burns ``seconds`` of this thread's CPU time (not sleep, and not wall time:
    a task is a fixed amount of work, so a worker that shares its core with
    others, more workers than cores or other load, takes longer, as real work
    would). Returns the duration it was given."""
    clock = time.thread_time
    end = clock() + seconds
    while clock() < end:
        pass
    return seconds


def busy_indexed(job: list) -> int:
    """``job`` is [index, seconds] (a list, so mpire does not unpack it)."""
    index, seconds = job
    busy(seconds)
    return index * 7 + 1


def matmul_indexed(job: list) -> int:
    """``job`` is [index, side, products]: that many products of two side x side
    matrices of small integers (exact in float64, whatever the BLAS's
    summation order or thread count); returns an exact checksum."""
    import numpy as np

    index, side, products = job
    rng = np.random.default_rng(index)
    a = rng.integers(0, 10, (side, side)).astype(np.float64)
    b = rng.integers(0, 10, (side, side)).astype(np.float64)
    total = 0
    for _ in range(products):
        total += int((a @ b).sum())
    return total


# -- 3: image filters over one shared image ------------------------------------------

_IMAGE: Any = None


def make_image(side: int, seed: int = 3):
    import numpy as np

    rng = np.random.default_rng(seed)
    # Small integers stored as float32: every sum below is exact in float32/float64,
    # so the result does not depend on summation order, SIMD path or alignment.
    return rng.integers(0, 256, size=(side, side), dtype=np.int16).astype(np.float32)


def filter_image(image, k: int) -> tuple:
    """Filter ``k``: a separable 3-tap box blur with stride d = 1 + k % 5, then
    a horizontal gradient for odd k. Returns a small exact digest of the output."""
    import numpy as np

    d = 1 + k % 5
    rows = image[:-2 * d] + image[d:-d] + image[2 * d:]
    out = rows[:, :-2 * d] + rows[:, d:-d] + rows[:, 2 * d:]
    if k % 2:
        out = out[:, 1:] - out[:, :-1]
    return (k, float(out.sum(dtype=np.float64)), float(np.abs(out[::97, ::89]).sum(dtype=np.float64)))


def set_image(image) -> None:
    global _IMAGE
    _IMAGE = image


def filter_global(k: int) -> tuple:
    return filter_image(_IMAGE, k)


def filter_shared_objects(image, k: int) -> tuple:
    """mpire's shared_objects convention: the shared object comes first."""
    return filter_image(image, k)


def filter_shared_array(shared, k: int) -> tuple:
    import numpy as np

    return filter_image(np.asarray(shared), k)


# -- 4: stateful word-prefix counts ------------------------------------------------------

_COUNTS: Optional[Counter] = None


def make_documents(n_docs: int, words_per_doc: int, seed: int = 4) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # A Zipf-ish vocabulary: a few thousand words, some frequent, most rare.
    vocab = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(3, 11, size=5000)]
    ranks = np.minimum(rng.zipf(1.3, size=(n_docs, words_per_doc)), len(vocab)) - 1
    return [" ".join(vocab[i] for i in row) for row in ranks.tolist()]


def count_prefixes_into(counts: Counter, doc: str) -> int:
    words = doc.split()
    for w in words:
        counts[w[:1]] += 1
        counts[w[:2]] += 1
        counts[w[:3]] += 1
    return len(words)


def count_docs(docs: list) -> int:
    """A batch of documents into the worker's Counter (Dask: one task per batch)."""
    return sum(count_doc(d) for d in docs)


def init_counts() -> None:
    global _COUNTS
    _COUNTS = Counter()


def count_doc(doc: str) -> int:
    """Counts into the worker's own Counter (set up by the initializer, or lazily)."""
    global _COUNTS
    if _COUNTS is None:
        _COUNTS = Counter()
    return count_prefixes_into(_COUNTS, doc)


def flush_counts(barrier_dir: str, parties: int, timeout: float = 60.0) -> dict:
    """Hands back this worker's counts and clears them.

    Exactly one flush must reach each worker: each flush waits (a file barrier,
    which any process of any library can use) until ``parties`` distinct
    processes have arrived, so no worker can take two.
    """
    global _COUNTS
    path = os.path.join(barrier_dir, str(os.getpid()))
    with open(path, "w"):
        pass
    deadline = time.monotonic() + timeout
    while len(os.listdir(barrier_dir)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"flush barrier: {len(os.listdir(barrier_dir))} of {parties} workers arrived")
        time.sleep(0.001)
    counts = dict(_COUNTS or {})
    _COUNTS = None
    return counts


def take_counts() -> dict:
    """For Dask's client.run (runs once on every worker)."""
    global _COUNTS
    counts = dict(_COUNTS or {})
    _COUNTS = None
    return counts


def mpire_count(worker_state: dict, doc: str) -> int:
    return count_prefixes_into(worker_state.setdefault("counts", Counter()), doc)


def mpire_exit(worker_state: dict) -> dict:
    return dict(worker_state.get("counts", {}))


class PrefixCounter:
    """Ray actor body: one per worker, holding its counts."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def count(self, docs: list) -> int:
        return sum(count_prefixes_into(self.counts, d) for d in docs)

    def take(self) -> dict:
        return dict(self.counts)


# -- 5: expensive per-worker initialisation ------------------------------------------

_TABLE: Any = None


def build_table(n: int):
    """A costly lookup table (n int64 = 8n bytes): random, sorted, prefix-summed."""
    import numpy as np

    rng = np.random.default_rng(5)
    table = np.sort(rng.integers(0, 1 << 20, size=n, dtype=np.int64))
    return np.cumsum(table) & 0xFFFFFFF


def init_table(n: int) -> None:
    global _TABLE
    _TABLE = build_table(n)


def evaluate_with(table, seed: int) -> int:
    import numpy as np

    idx = np.random.default_rng(seed).integers(0, len(table), size=2000)
    return int(table[idx].sum())


def evaluate(seed: int) -> int:
    return evaluate_with(_TABLE, seed)


def evaluate_lazy(n: int, seed: int) -> int:
    """For libraries without an initializer: build on first use, keep in a global."""
    global _TABLE
    if _TABLE is None or len(_TABLE) != n:
        _TABLE = build_table(n)
    return evaluate_with(_TABLE, seed)


def evaluate_many_lazy(n: int, seeds: list) -> list:
    return [evaluate_lazy(n, s) for s in seeds]


def mpire_init_table(worker_state: dict, n: int) -> None:
    worker_state["table"] = build_table(n)


def mpire_evaluate(worker_state: dict, seed: int) -> int:
    return evaluate_with(worker_state["table"], seed)


class TableEvaluator:
    """Ray actor body: builds the table once, evaluates it many times."""

    def __init__(self, n: int) -> None:
        self.table = build_table(n)

    def evaluate(self, seeds: list) -> list:
        return [evaluate_with(self.table, s) for s in seeds]


# -- 7: large data ---------------------------------------------------------------------


def transform_slice(block) -> tuple:
    """Sums a 4 MiB slice and returns a 4 MiB transformed copy."""
    return int(block.sum()), block * 3 + 1


# -- helpers for libraries that need them ------------------------------------------------


def apply_chunk(fn: Callable[[Any], Any], chunk: list) -> list:
    """Runs fn over a chunk (user-level batching for Dask and Ray maps)."""
    return [fn(x) for x in chunk]


_LAZY_INIT_DONE: set = set()


def call_with_init(initializer: Callable[..., Any], initargs: tuple, fn: Callable[[Any], Any], x: Any) -> Any:
    """Runs ``initializer(*initargs)`` once per process, then ``fn(x)`` (lazy initialisation)."""
    key = (getattr(initializer, "__qualname__", repr(initializer)), repr(initargs)[:200])
    if key not in _LAZY_INIT_DONE:
        initializer(*initargs)
        _LAZY_INIT_DONE.add(key)
    return fn(x)


def worker_pid(_: Any = None) -> int:
    return os.getpid()
