"""Docker's default 64 MB /dev/shm (issue 12): the README's big-data examples
must work whatever the size of the /dev/shm mount.

Each scenario runs as a script in a child process. Inside a private mount
namespace whose /dev/shm is a 64 MB tmpfs (what `docker run` gives a
container by default), and again without one. The arena's segments are
memfds, which the /dev/shm mount does not count, so nothing here may raise
MemoryError or travel in-band for want of room. The script also checks that
it leaves no shoal name in /dev/shm once its pools are closed.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from shm_segments import shoal_segments_of

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import shoal
    import shoal.shm.shared_array
    from shm_segments import shoal_segments_of

    def total(block):
        return float(block.sum())

    def zero_copy(block):
        return shoal.shm.shared_array.in_shared_memory(block)

    def make(i):
        return np.full(512 * 1024, i, dtype=np.float64)  # 4 MiB

    def fill(out, part, parts):
        n = len(out) // parts
        out[part * n:(part + 1) * n] = part + 1
        return part

    def scale(arr, factor):
        arr *= factor

    def main():
        free = os.statvfs("/dev/shm")
        print("dev/shm size MiB", free.f_blocks * free.f_frsize >> 20, flush=True)
        data = np.random.default_rng(1).random(32_000_000)  # 256 MB
        with shoal.Executor(2) as ex:
            # 64 slices of a 256 MB array, each copied once into shared memory.
            got = sum(ex.map(total, np.array_split(data, 64)))
            assert abs(got - float(data.sum())) < 1e-6 * abs(got), (got, float(data.sum()))
            # ... through shared memory, not inside the pickles (the fallback when the arena is full).
            assert all(ex.map(zero_copy, np.array_split(data, 64)))
            # A map returning 64 results of 4 MB.
            for i, arr in enumerate(ex.map(make, range(64))):
                assert arr.shape == (512 * 1024,) and arr[0] == i and arr[-1] == i, i
                assert shoal.shm.shared_array.in_shared_memory(arr), i
            # A 128 MB SharedArray written by the workers, read here.
            out = shoal.SharedArray((16_000_000,), dtype=np.float64)
            assert sorted(ex.map(fill, [out] * 8, range(8), [8] * 8)) == list(range(8))
            for part in range(8):
                chunk = out[part * 2_000_000:(part + 1) * 2_000_000]
                assert chunk.min() == chunk.max() == part + 1, part
            del chunk
            # share() and a submit of the 256 MB array.
            shared = shoal.share(data)
            assert abs(ex.submit(total, shared).result() - float(data.sum())) < 1e-3
            assert abs(ex.submit(total, data).result() - float(data.sum())) < 1e-3
            used = ex.stats().arena_used_bytes
            print("shm_used_bytes", used, flush=True)
            out.close()
            del out, shared
        # A SharedArray shared with multiprocessing children (no pool): spawned ones attach it.
        import multiprocessing
        arr = shoal.SharedArray((8_000_000,))  # 64 MB
        arr[:] = 1.0
        for method in ("spawn", "fork"):
            child = multiprocessing.get_context(method).Process(target=scale, args=(arr, 2.0))
            child.start()
            child.join(120)
            assert child.exitcode == 0, (method, child.exitcode)
        assert arr.min() == arr.max() == 4.0
        arr.close()
        del arr
        shoal.shm.shared_array.default_arena().close()  # where the SharedArrays lived
        mine = shoal_segments_of()
        assert mine == set(), mine
        print("OK", flush=True)

    if __name__ == "__main__":
        main()
    """
)


def _env():
    env = dict(os.environ)
    tests = os.path.dirname(os.path.abspath(__file__))  # for shm_segments
    env["PYTHONPATH"] = os.pathsep.join([tests] + [p for p in sys.path if p])
    return env


def _run(cmd, tmp_path):
    script = tmp_path / "readme_examples.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        cmd + [sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    return proc


def _namespace_prefix():
    """The command that runs a program with a private 64 MB /dev/shm, or None (with why)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "unshare is not installed"
    probe = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=64m tmpfs /dev/shm && df -k /dev/shm"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        return None, f"cannot make a private 64 MB /dev/shm here: {probe.stderr.strip() or probe.returncode}"
    return [unshare, "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"', "sh"], ""


def test_readme_examples_with_a_64_mb_dev_shm(tmp_path):
    prefix, why = _namespace_prefix()
    if prefix is None:
        pytest.skip(why)
    proc = _run(prefix, tmp_path)
    assert "dev/shm size MiB 64" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-6000:]
    assert "MemoryError" not in proc.stderr, proc.stderr[-6000:]


def test_readme_examples_with_the_hosts_dev_shm(tmp_path):
    proc = _run([], tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-6000:]
    assert "MemoryError" not in proc.stderr, proc.stderr[-6000:]


OWNER = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    import shoal
    small = shoal.SharedArray((1000,), dtype=np.int64)
    big = shoal.SharedArray((4_000_000,), dtype=np.int64)  # 32 MB: a segment of its own
    small[:] = 7
    big[:] = 9
    sys.stdout.write(pickle.dumps(small).hex() + " " + pickle.dumps(big).hex() + "\\n")
    sys.stdout.flush()
    sys.stdin.readline()  # killed while waiting here
    """
)


def test_once_a_shared_arrays_owner_is_killed_mappings_stay_and_new_attaches_fail_cleanly(tmp_path):
    import pickle
    import select
    import signal

    import shoal  # noqa: F401 - the package, as the unpickler needs it

    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script)], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 60)  # bounded: a hung owner fails the test
        assert ready, "the owner did not start within 60 s"
        line = owner.stdout.readline()
        assert line, "the owner did not start"
        small_payload, big_payload = (bytes.fromhex(part) for part in line.split())
        small = pickle.loads(small_payload)  # maps the small one's segment while the owner lives
        assert small.sum() == 7000
        owner.send_signal(signal.SIGKILL)
        assert owner.wait(timeout=60) == -signal.SIGKILL
        assert small.sum() == 7000  # the mapping outlives the owner
        small[:] = 8
        assert small.sum() == 8000
        with pytest.raises(FileNotFoundError, match=r"owner \(pid \d+\) has exited or closed the arena"):
            pickle.loads(big_payload)  # the big one's segment was never mapped here: it is gone
        del small
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=60)
    # The killed owner's control segment and token go with the next shoal start.
    subprocess.run([sys.executable, "-c", "import shoal"], env=_env(), check=True, timeout=60)
    assert shoal_segments_of(owner.pid, locks=True) == set()


# A spill that hits ENOSPC (issue 12). A payload too big for its ring travels
# through a segment of its own in /dev/shm (not the arena: bytes and str pickle
# in-band). With /dev/shm full, the one payload that cannot be spilled fails,
# with a clear error through the normal result path; its worker, the pool and
# /dev/shm are left as they were.
FULL_SHM_SCRIPT = textwrap.dedent(
    """
    import errno, os, sys
    import shoal

    SHM = "/dev/shm"

    def big(n):
        return b"r" * n

    def length(data):
        return len(data)

    def names():
        return set(os.listdir(SHM))

    def fill(path):
        # Every free block of /dev/shm, reserved at once; then byte by byte past it.
        free = os.statvfs(SHM)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, free.f_bavail * free.f_frsize)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
            chunk = b"f" * 4096
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
        finally:
            os.close(fd)
        assert os.statvfs(SHM).f_bavail == 0

    def main():
        with shoal.Executor(2) as ex:
            n = 2 * ex._runtime.inline_payload_limit + 12345  # too big for a ring frame
            assert len(ex.submit(big, n).result(timeout=60)) == n  # spilled: /dev/shm has room
            assert ex.submit(length, b"a" * n).result(timeout=60) == n
            before = names()
            filler = os.path.join(SHM, "filler-%d" % os.getpid())
            fill(filler)
            try:
                # A result that cannot be spilled: that task fails, through its result.
                try:
                    ex.submit(big, n).result(timeout=60)
                    print("FAIL: the result arrived")
                except MemoryError as e:
                    print("RESULT-ERROR", type(e).__name__, str(e).replace("\\n", " "))
                # The worker goes on (no worker was lost), and so does the pool.
                assert [ex.submit(pow, 3, i).result(timeout=60) for i in range(8)] == [3 ** i for i in range(8)]
                assert ex.stats().workers_lost == 0, ex.stats()
                # Arguments that cannot be spilled: that submit's future fails.
                try:
                    ex.submit(length, b"a" * n).result(timeout=60)
                    print("FAIL: the arguments arrived")
                except Exception as e:
                    print("ARGUMENT-ERROR", type(e).__name__, str(e).replace("\\n", " "))
                assert ex.submit(pow, 2, 5).result(timeout=60) == 32
                assert ex.stats().workers_lost == 0, ex.stats()
                # Nothing was left in /dev/shm by the failed spills.
                assert names() == before | {os.path.basename(filler)}, names() ^ before
            finally:
                os.unlink(filler)
            # Room again: the same work goes through.
            assert len(ex.submit(big, n).result(timeout=60)) == n
            assert ex.submit(length, b"a" * n).result(timeout=60) == n
        left = {name for name in names() if not name.startswith("shoal-lock-")}  # but this process's token
        assert left == set(), left
        print("OK", flush=True)

    if __name__ == "__main__":
        main()
    """
)


def test_a_spill_into_a_full_dev_shm_fails_that_task_only(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    prefix = [unshare, "-m", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$@"', "sh"]
    probe = subprocess.run(prefix + ["true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private /dev/shm here: {probe.stderr.strip() or probe.returncode}")
    script = tmp_path / "full_shm.py"
    script.write_text(FULL_SHM_SCRIPT)
    proc = subprocess.run(prefix + [sys.executable, str(script)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0 and "OK" in out and "FAIL" not in out, out + proc.stderr[-6000:]
    result = [line for line in out.splitlines() if line.startswith("RESULT-ERROR")]
    assert len(result) == 1, out
    assert "MemoryError" in result[0] and "the result (" in result[0], result[0]
    assert "could not be spilled to /dev/shm: No space left on device" in result[0], result[0]
    argument = [line for line in out.splitlines() if line.startswith("ARGUMENT-ERROR")]
    assert len(argument) == 1, out
    assert "could not be spilled to /dev/shm: No space left on device" in argument[0], argument[0]
