"""Stale shared-memory cleanup at ``import shoal`` (issue 12, hardening).

The cleanup must never remove a live program's segment, even when that
program's pid looks dead from where the cleanup runs (another PID namespace
sharing /dev/shm, as with ``docker --ipc=host``), and it must touch only files
of our own format: never a symlink, a FIFO or a name that is not exactly ours.
"""
import fcntl
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import shoal
from shoal.shm.shared_array import Arena, SharedArray
from shm_segments import shoal_segments_of

SHM = "/dev/shm"
TOKEN_BYTES = 64


def dead_pid(k: int) -> int:
    """A pid no process can have (above PID_MAX_LIMIT, 2**22), unique to this test process."""
    return 1_000_000_000 + os.getpid() * 16 + 8 + k


def lexists(name: str) -> bool:
    return os.path.lexists(os.path.join(SHM, name))


def run_import(*prefix: str) -> int:
    """Imports shoal in a fresh interpreter (which reclaims stale segments); returns how many it removed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([*prefix, sys.executable, "-c", "import shoal; print(shoal._core.reclaimed_at_import)"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def plant(name: str, size: int = 4096, mode: int = 0o600) -> str:
    fd = os.open(os.path.join(SHM, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return name


@pytest.fixture
def shm_names():
    """Names the test plants in /dev/shm; whatever is left of them is removed afterwards."""
    names = []
    yield names
    for n in names:
        path = os.path.join(SHM, n)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.lexists(path):
            os.unlink(path)


def test_planted_files_and_symlinks_survive_the_cleanup(shm_names, tmp_path):
    pid = dead_pid(0)
    seg = f"shoal-{pid}-"
    target = tmp_path / "target"
    target.write_text("precious")
    keep = []

    def planted(name):
        shm_names.append(name)
        keep.append(name)
        return os.path.join(SHM, name)

    def planted_file(name, **kw):
        shm_names.append(plant(name, **kw))
        keep.append(name)

    planted_file(seg + "fake")
    os.symlink(target, planted(seg + "0123456789abcdef"))  # a symlink with a perfect name
    os.symlink(target, planted(f"shoal-lock-{pid}-0123456789abcdef"))
    os.mkfifo(planted(seg + "fedcba9876543210"), 0o600)  # opening it must not block the cleanup
    planted_file(seg + "00000000000000aa", mode=0o644)
    planted_file(seg + "00000000000000bb", size=100)
    planted_file(seg + "0123456789ABCDEF")
    planted_file(f"shoal-0{pid}-0123456789abcdef")
    stale = plant(seg + "00000000000000ee")  # a genuine stale segment of ours
    shm_names.append(stale)

    assert run_import() >= 1
    assert not lexists(stale)
    assert [n for n in keep if not lexists(n)] == []
    assert target.read_text() == "precious"
    assert os.path.islink(os.path.join(SHM, seg + "0123456789abcdef"))


def _hold_token(pid: int, name: str) -> int:
    """A token as shoal makes one, held with a shared flock by this process; returns its fd."""
    fd = os.open(os.path.join(SHM, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    header = b"SHOALTOK" + struct.pack("<Ii", 1, pid)
    os.write(fd, header + bytes(TOKEN_BYTES - len(header)))
    return fd


def test_a_segment_whose_owner_looks_dead_stays_while_its_token_is_locked(shm_names):
    pid = dead_pid(1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    token = f"shoal-lock-{pid}-{os.urandom(8).hex()}"
    shm_names.append(token)
    fd = _hold_token(pid, token)
    try:
        segment = plant(f"shoal-{pid}-{os.urandom(8).hex()}")
        shm_names.append(segment)
        run_import()
        assert lexists(segment), "a segment whose token is locked was removed"
        assert lexists(token)
    finally:
        os.close(fd)  # the owner is gone now
    assert run_import() >= 1
    assert not lexists(segment)
    assert not lexists(token)


def _unshare_pid_namespace() -> list:
    """The command prefix that runs a program in a new PID namespace, or skips the test."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    prefix = [unshare, "--pid", "--fork", "--mount-proc"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.strip()}")
    return prefix


def test_import_in_another_pid_namespace_leaves_a_live_pool_alone(no_leaks):
    prefix = _unshare_pid_namespace()
    me = os.getpid()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    arena = Arena.create(limit=64 << 20)
    try:
        a = SharedArray(1 << 20, np.float64, arena=arena)  # 8 MiB: a segment of the arena's own
        a[:] = 1.0
        with shoal.Executor(2) as ex:
            assert ex.submit(np.sum, a).result(timeout=30) == 1 << 20
            ours = shoal_segments_of(me, locks=True)
            assert any(n.startswith(f"shoal-{me}-") for n in ours)
            # From inside the namespace our pid does not exist: the old cleanup took that as death.
            code = (f"import os\ntry:\n    os.kill({me}, 0)\n    print('alive')\n"
                    "except ProcessLookupError:\n    print('looks-dead')\n")
            seen = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, timeout=60)
            assert seen.returncode == 0, seen.stderr
            if seen.stdout.strip() != "looks-dead":
                pytest.skip("our pid number happens to exist in the new namespace")
            run_import(*prefix)
            missing = {n for n in ours if not lexists(n)}
            assert missing == set(), "the cleanup in another PID namespace removed a live pool's segments"
            # The pool still works, with its payloads in the arena.
            assert ex.submit(np.sum, a).result(timeout=30) == 1 << 20
            assert sum(ex.map(abs, range(-100, 0), timeout=30)) == 5050
        del a
    finally:
        arena.close()
