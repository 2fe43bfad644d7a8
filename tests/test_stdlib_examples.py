"""The code examples of the Python documentation's concurrent.futures and
multiprocessing.Pool pages, run against shoal: the same output as with the
stdlib pools (each run as a script, as the documentation runs them)."""
import os
import subprocess
import sys

import pytest

_PRIME_EXAMPLE = '''
import concurrent.futures
import math
import shoal

PRIMES = [112272535095293, 112582705942171, 112272535095293, 115280095190773, 115797848077099, 1099726899285419]

def is_prime(n):
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True

def main():
    with POOL() as executor:
        for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
            print('%d is prime: %s' % (number, prime))

if __name__ == '__main__':
    main()
'''

_POOL_EXAMPLE = '''
from multiprocessing import TimeoutError
import multiprocessing
import os
import time
import shoal

def f(x):
    return x*x

if __name__ == '__main__':
    with POOL(processes=4) as pool:
        print(pool.map(f, range(10)))
        for i in pool.imap_unordered(f, range(10)):
            print(i)
        res = pool.apply_async(f, (20,))
        print(res.get(timeout=1))
        res = pool.apply_async(os.getpid, ())
        print(res.get(timeout=1) != os.getpid())
        multiple_results = [pool.apply_async(os.getpid, ()) for i in range(4)]
        print(all(res.get(timeout=1) != os.getpid() for res in multiple_results))
        res = pool.apply_async(time.sleep, (10,))
        try:
            print(res.get(timeout=1))
        except TimeoutError:
            print("We lacked patience and got a multiprocessing.TimeoutError")
        print("For the moment, the pool remains available for more work")
    print("Now the pool is closed and no longer available")
'''

_DEADLOCK_EXAMPLE = '''
import concurrent.futures
import shoal

def wait_on_future():
    f = 5
    return f * 2

if __name__ == '__main__':
    executor = POOL(max_workers=1)
    future = executor.submit(wait_on_future)
    print(future.result())
    executor.shutdown()
'''


def _run(source, pool, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(source.replace("POOL", pool))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize(
    "source, stdlib, ours",
    [
        (_PRIME_EXAMPLE, "concurrent.futures.ProcessPoolExecutor", "shoal.Executor"),
        (_DEADLOCK_EXAMPLE, "concurrent.futures.ProcessPoolExecutor", "shoal.Executor"),
        (_POOL_EXAMPLE, "multiprocessing.Pool", "shoal.Pool"),
    ],
    ids=["executor-primes", "executor-submit", "pool-examples"],
)
def test_documentation_example_gives_the_stdlibs_output(source, stdlib, ours, tmp_path):
    expected = _run(source, stdlib, tmp_path)
    got = _run(source, ours, tmp_path)
    if "imap_unordered" in source:  # unordered by definition: compare those lines as a set
        expected, got = sorted(expected.splitlines()), sorted(got.splitlines())
    assert got == expected
