"""Garbage in a pool's shared memory never crashes the process (issue 12).

Another process of the same user can open the pool's segment in /dev/shm and
write anything into it: the header, a worker's inbox or outbox, or all of it.
The pool must survive: a corrupt header breaks the pool with
``BrokenPoolError("the pool's shared memory was corrupted: ...")``; garbage in
one worker's rings fails over that worker alone (killed and replaced, its
tasks retried or failed with ``WorkerLostError``), and the pool goes on.

Each pool runs in a subprocess of the test; the test (another process, as an
intruder would be) finds the pool's segment in /dev/shm by its creator's pid
and its magic number, writes garbage while tasks run, and then checks that
the subprocess exits with status 0 after printing the error it expected.
Every wait is bounded.
"""
import mmap
import os
import random
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from shm_segments import shoal_segments_of

SHM = "/dev/shm"
POOL_MAGIC = struct.pack("<Q", 0x73686F616C504F4F)  # PoolHeader::kMagic
RING_MAGIC = struct.pack("<Q", 0x73686F616C52494E)  # RingHeader::kMagic
# RingHeader (cpp/include/shoal/ipc/ring.hpp): capacity at 8, head at 64,
# tail at 128, the data area at 320; a frame header is (length, length ^ CHECK).
RING_CAPACITY, RING_HEAD, RING_TAIL, RING_DATA = 8, 64, 128, 320
CHECK = 0x5A17F00D
CORRUPTED = "the pool's shared memory was corrupted"

SCRIPT = textwrap.dedent(
    r'''
    import os
    import sys
    import threading
    import time

    import shoal
    import tasks

    def shut_down(ex):
        t = threading.Thread(target=ex.shutdown, daemon=True)
        t.start()
        t.join(timeout=60)
        return not t.is_alive()

    retries = int(sys.argv[1])
    ex = shoal.Executor(2)
    # Tiny tasks first: the engine measures them, and queues the next tasks
    # in the workers' inboxes (it sends a task that may be long one at a time).
    for _ in range(20):
        assert ex.submit(pow, 2, 10).result(timeout=60) == 1024
    deadline = time.monotonic() + 60
    while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # both workers up
    # Two tasks per worker: each runs one and holds the next in its inbox, and
    # none ends before the release below.
    started, release = shoal.Semaphore(0), shoal.Event()
    running = [ex.with_options(retries=retries).submit(tasks.signal_then_wait_for_event, started, release)
               for _ in range(4)]
    if not (started.acquire(timeout=60) and started.acquire(timeout=60)):
        print("FAIL: the first two tasks did not start, one in each worker", flush=True)
        os._exit(1)
    deadline = time.monotonic() + 30
    while not all(f.running() for f in running) and time.monotonic() < deadline:
        time.sleep(0.01)  # the other two have left the queue for the inboxes
    if not all(f.running() for f in running):
        print("FAIL: the last two tasks did not reach the inboxes", flush=True)
        os._exit(1)
    print("READY", flush=True)
    then = sys.stdin.readline().strip()  # the test has written its garbage
    later = []
    for i in range(6):
        try:
            later.append(ex.with_options(retries=retries).submit(pow, 3, i))
        except shoal.BrokenPoolError as e:  # a broken pool refuses new tasks
            print("BROKEN", str(e).replace("\n", " "))
    # The running tasks end once the pool has noticed the garbage (a task
    # failed: a worker lost, or the pool broken; or a worker lost and its task
    # retried), or at once for garbage in an inbox, which a worker reads only
    # once its task is done.
    def noticed():
        try:
            lost = ex.stats().workers_lost
        except Exception:  # noqa: BLE001 - a broken pool
            return True
        return lost > 0 or any(f.done() for f in running + later)
    deadline = time.monotonic() + 60
    while then == "notice" and not noticed() and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for fut in running + later:
        try:
            fut.result(timeout=60)
            print("ok")
        except shoal.WorkerLostError as e:
            print("LOST", str(e).replace("\n", " "))
        except shoal.BrokenPoolError as e:
            print("BROKEN", str(e).replace("\n", " "))
        except TimeoutError:
            print("FAIL: a task was left waiting")
            os._exit(1)
        except Exception as e:
            print("OTHER", type(e).__name__, str(e).replace("\n", " "))
    try:
        print("AFTER", ex.submit(pow, 3, 3).result(timeout=60))
    except shoal.BrokenPoolError as e:  # raised by submit or by result
        print("AFTER-BROKEN", str(e).replace("\n", " "))
    if not shut_down(ex):
        print("FAIL: shutdown hung")
        os._exit(1)
    print("DONE")
    '''
)


def pool_segment(pid, timeout=30):
    """The path of the pool segment that process `pid` created: a name
    `shoal-<pid>-<hex>` in /dev/shm whose first 8 bytes are the pool's magic."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in shoal_segments_of(pid):
            path = os.path.join(SHM, name)
            try:
                with open(path, "rb") as f:
                    if f.read(8) == POOL_MAGIC:
                        return path
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no pool segment of process {pid} in {SHM}")


def rings(mem):
    """Offsets of the rings in a pool segment, in order: slot 0's inbox and
    outbox, slot 1's, ... (found by their magic number, 64-byte aligned)."""
    found = []
    for off in range(64, len(mem) - 8, 64):
        if mem[off:off + 8] == RING_MAGIC:
            found.append(off)
    return found


def u64(mem, off):
    return struct.unpack_from("<Q", mem, off)[0]


def plant_frame(mem, ring, length, body, published):
    """A frame with a valid check word for `length` at the ring's read position."""
    cap = u64(mem, ring + RING_CAPACITY)
    tail = u64(mem, ring + RING_TAIL)
    data = struct.pack("<II", length, length ^ CHECK) + body
    for k, b in enumerate(data):
        mem[ring + RING_DATA + ((tail + k) & (cap - 1))] = b
    struct.pack_into("<Q", mem, ring + RING_HEAD, tail + published)


def garble(path, where, seed):
    rng = random.Random(seed)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mem:
        found = rings(mem)
        assert len(found) >= 4, f"expected the rings of 2 slots, found {len(found)}"
        inbox0, outbox0 = found[0], found[1]
        if where == "header-ff":
            mem[0:32] = b"\xff" * 32  # magic, version, slots, sizes
            mem[64:72] = b"\xff" * 8  # the doorbell's words
        elif where == "header-plausible":
            struct.pack_into("<I", mem, 12, 3)  # one slot more than the pool has
        elif where == "outbox-plausible":
            # A well-formed frame: a result (status ok) for a job nobody sent.
            frame = struct.pack("<IIQQ", 16, 0, 987654321, 5)
            plant_frame(mem, outbox0, len(frame), frame, 8 + len(frame))
        elif where == "outbox-length":
            # A right check word for a length the ring could never have published.
            plant_frame(mem, outbox0, u64(mem, outbox0 + RING_CAPACITY) - 8, b"", 64)
        elif where == "outbox-ff":
            mem[outbox0:outbox0 + RING_DATA] = b"\xff" * RING_DATA
        elif where == "inbox-random":
            cap = u64(mem, inbox0 + RING_CAPACITY)
            tail = u64(mem, inbox0 + RING_TAIL)
            for k in range(4096):
                mem[inbox0 + RING_DATA + ((tail + k) & (cap - 1))] = rng.randrange(256)
            struct.pack_into("<Q", mem, inbox0 + RING_HEAD, tail + 8 * rng.randrange(1, cap // 8))
        elif where == "everything":
            block = rng.randbytes(len(mem))
            mem[:] = block
        else:
            raise ValueError(where)


def run_pool_and_garble(tmp_path, where, retries=0, seed=1):
    script = tmp_path / "garbled_pool.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__))] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(retries)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # bounded: the pool either starts or the child dies
        assert line.strip() == "READY", line + proc.stderr.read()[-3000:]
        garble(pool_segment(proc.pid), where, seed)
        then = "release" if where.startswith("inbox") else "notice"
        out, err = proc.communicate(then + "\n", timeout=180)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{out}\n{err[-4000:]}"
    assert "DONE" in out and "FAIL" not in out, out + err[-4000:]
    return out, err


@pytest.mark.parametrize("where", ["header-ff", "header-plausible"])
def test_corrupt_header_breaks_the_pool_with_a_clear_error(tmp_path, where):
    out, err = run_pool_and_garble(tmp_path, where)
    assert f"BROKEN {CORRUPTED}: the pool header" in out, out + err[-4000:]
    assert f"AFTER-BROKEN {CORRUPTED}" in out, out


@pytest.mark.parametrize("where", ["outbox-plausible", "outbox-length", "outbox-ff"])
def test_corrupt_outbox_fails_over_one_worker_and_the_pool_goes_on(tmp_path, where):
    out, err = run_pool_and_garble(tmp_path, where)
    lost = [line for line in out.splitlines() if line.startswith("LOST")]
    assert lost, out + err[-4000:]
    assert all(CORRUPTED in line or "exited" in line for line in lost), out
    assert any(CORRUPTED in line and "outbox" in line for line in lost), out
    assert "BROKEN" not in out, out
    assert "AFTER 27" in out, out


def test_corrupt_outbox_with_retries_loses_no_task(tmp_path):
    out, err = run_pool_and_garble(tmp_path, "outbox-plausible", retries=2)
    assert "LOST" not in out and "BROKEN" not in out, out + err[-4000:]
    assert out.splitlines().count("ok") == 10 and "AFTER 27" in out, out


def test_corrupt_inbox_makes_its_worker_exit_with_a_clear_message(tmp_path):
    out, err = run_pool_and_garble(tmp_path, "inbox-random")
    assert "BROKEN" not in out, out + err[-4000:]
    assert "AFTER 27" in out, out
    # The worker said why it left (on the stderr it shares with its parent),
    # and its queued task was failed over with the same reason.
    assert f"{CORRUPTED}: worker 0" in err and "found its inbox corrupt" in err, err[-4000:]
    assert any(line.startswith("LOST") and "found its inbox corrupt" in line for line in out.splitlines()), out


@pytest.mark.parametrize("seed", [1, 2])
def test_random_bytes_over_the_whole_segment_never_crash_the_process(tmp_path, seed):
    out, err = run_pool_and_garble(tmp_path, "everything", seed=seed)
    assert f"BROKEN {CORRUPTED}" in out or f"AFTER-BROKEN {CORRUPTED}" in out, out + err[-4000:]


# ---- garbage in the pool's arena ------------------------------------------------
#
# Big buffers (numpy arrays of 64 KiB and more) travel through the pool's
# SharedArena: a control segment in /dev/shm (its magic word is "hoaeARN1"),
# then memfd segments the pool's process holds, which any process of the user
# can open as /proc/<pid>/fd/<n>. Another process writes random bytes over the
# arena's metadata while tasks are queued with their arguments in it. The
# parent must survive; the calls that meet the garbage raise a clear error (the
# tasks whose blocks it hit fail, with TransferError naming the arena, or are
# refused at submit); everything else goes on, and no worker dies of it.

ARENA_MAGIC = b"hoaeARN1"  # kControlMagic, cpp/src/mem/arena_layout.hpp
# Control (arena_layout.hpp): the slot table at 656, 128 bytes a slot, the name at 40 in each.
ARENA_SLOTS, ARENA_SLOT_BYTES, ARENA_SLOT_NAME = 656, 128, 40
ARENA_MUTEX, ARENA_MUTEX_END = 40, 80

ARENA_SCRIPT = textwrap.dedent(
    r'''
    import os
    import sys
    import threading
    import time

    import numpy as np
    import shoal
    import tasks

    def total(arr):
        return float(arr.sum())

    def make(i):
        return np.full(200_000, i, dtype=np.float64)  # 1.6 MB: back through the arena

    def report(what, fn):
        try:
            print(what, "ok", fn(), flush=True)
        except TimeoutError:
            print("FAIL: a task was left waiting", flush=True)
            os._exit(1)
        except Exception as e:
            print(what, "ERROR", type(e).__name__, str(e).replace("\n", " ")[:600], flush=True)

    ex = shoal.Executor(2)
    arr = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    assert ex.submit(total, arr).result(timeout=60) == float(arr.sum())
    assert ex.submit(make, 3).result(timeout=60)[0] == 3
    # Both workers busy until the garbage is written; four tasks queued behind
    # them, whose arguments are in the arena already (packed at submit).
    started, release = shoal.Semaphore(0), shoal.Event()
    running = [ex.submit(tasks.signal_then_wait_for_event, started, release) for _ in range(2)]
    if not (started.acquire(timeout=60) and started.acquire(timeout=60)):
        print("FAIL: the first two tasks did not start, one in each worker", flush=True)
        os._exit(1)
    queued = [ex.submit(total, arr) for _ in range(4)]
    print("READY", flush=True)
    sys.stdin.readline()  # the test has written its garbage
    release.set()
    for fut in running + queued:
        report("QUEUED", lambda: fut.result(timeout=60))
    for i in range(4):
        report("SUBMIT-ARRAY", lambda: ex.submit(total, arr).result(timeout=60))
        report("RESULT-ARRAY", lambda: float(ex.submit(make, i).result(timeout=60)[0]))
        report("SHARED", lambda: float(shoal.share(arr).sum()))
        report("PLAIN", lambda: ex.submit(pow, 3, 3).result(timeout=60))
    print("STATS", ex.stats().workers_lost, flush=True)
    t = threading.Thread(target=ex.shutdown, daemon=True)
    t.start()
    t.join(timeout=60)
    if t.is_alive():
        print("FAIL: shutdown hung", flush=True)
        os._exit(1)
    print("DONE", flush=True)
    '''
)


def arena_segments(pid, timeout=30):
    """The pool's arena: its control segment's path in /dev/shm, and the
    /proc/<pid>/fd paths of the memfd segments the process holds."""
    deadline = time.monotonic() + timeout
    control = None
    while control is None and time.monotonic() < deadline:
        for name in shoal_segments_of(pid):
            path = os.path.join(SHM, name)
            try:
                with open(path, "rb") as f:
                    if f.read(8) == ARENA_MAGIC:
                        control = path
            except OSError:
                pass
        time.sleep(0.05)
    assert control is not None, f"no arena control segment of process {pid} in {SHM}"
    memfds = []
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(f"/memfd:shoal-{pid}-"):
            memfds.append(os.path.join(fd_dir, fd))
    return control, memfds


def garble_arena(pid, where, seed):
    rng = random.Random(seed)
    control, memfds = arena_segments(pid)
    with open(control, "r+b") as f, mmap.mmap(f.fileno(), 0) as mem:
        slot0 = mem[ARENA_SLOTS + ARENA_SLOT_NAME:ARENA_SLOTS + ARENA_SLOT_NAME + 48]
        assert slot0.startswith(f"shoal-{pid}-".encode()), slot0  # the layout this test knows
        if where in ("control", "everything"):
            mem[:] = rng.randbytes(len(mem))
        elif where == "control-but-mutex":
            mem[:ARENA_MUTEX] = rng.randbytes(ARENA_MUTEX)
            mem[ARENA_MUTEX_END:ARENA_SLOTS] = rng.randbytes(ARENA_SLOTS - ARENA_MUTEX_END)
        elif where == "slots":
            mem[ARENA_SLOTS:ARENA_SLOTS + 16 * ARENA_SLOT_BYTES] = rng.randbytes(16 * ARENA_SLOT_BYTES)
    if where in ("segments", "everything"):
        assert memfds, "the arena has no memfd segment"
        for path in memfds:
            with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mem:
                # The first blocks' headers and bytes, and a run further in.
                mem[:65536] = rng.randbytes(65536)
                at = rng.randrange(0, len(mem) - 65536) // 64 * 64
                mem[at:at + 65536] = rng.randbytes(65536)


@pytest.mark.parametrize("where", ["control", "control-but-mutex", "slots", "segments", "everything"])
def test_garbage_in_the_arena_fails_the_calls_that_meet_it_never_the_process(tmp_path, where):
    script = tmp_path / "garbled_arena.py"
    script.write_text(ARENA_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__))] + sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # bounded: the pool either starts or the child dies
        assert line.strip() == "READY", line + proc.stderr.read()[-3000:]
        garble_arena(proc.pid, where, seed=7)
        out, err = proc.communicate("go\n", timeout=300)
    except BaseException:
        proc.kill()
        proc.communicate(timeout=30)
        raise
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{out}\n{err[-4000:]}"
    assert "DONE" in out and "FAIL" not in out, out + err[-4000:]
    lines = out.splitlines()
    # Tasks that need no arena go on; no worker died of the garbage.
    assert lines.count("PLAIN ok 27") == 4, out
    assert "STATS 0" in lines, out + err[-4000:]
    errors = [line for line in lines if " ERROR " in line]
    assert errors, "the garbage went unnoticed: " + out
    # Each error says what happened: the arena was corrupted, or (a descriptor
    # whose block the garbage erased) the block reads as gone.
    clear = ("was corrupted", "overwritten", "already freed", "freed before it arrived", "lies outside its segment",
             "cannot be reached", "the limit would be passed")
    unclear = [line for line in errors if not any(part in line for part in clear)]
    assert not unclear, "\n".join(unclear)
    # ... and at least one names the arena and says its memory was overwritten.
    assert any("shared-memory arena" in line and ("was corrupted" in line or "overwritten" in line)
               for line in errors), out
