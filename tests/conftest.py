import os
import time

import pytest

from shm_segments import shoal_segments_of


def rss_kib() -> int:
    """This process's resident set size in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _is_resource_tracker(pid: str) -> bool:
    # multiprocessing starts one per process on first use and keeps it until exit.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def child_pids() -> list:
    """Live (non-zombie) processes whose parent is this test process."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z" and not _is_resource_tracker(entry):
            found.append(int(entry))
    return found


def _thread_state(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def wait_until_asleep(pid: int, tid: int = None, timeout: float = 30.0) -> bool:
    """Waits until thread `tid` of process `pid` (its main thread by default)
    sleeps in a wait: state S at two looks a millisecond apart (a thread
    waiting for the GIL is asleep too, but this one's sleep between the looks
    hands the GIL over). False if that did not happen within `timeout`."""
    tid = pid if tid is None else tid
    deadline = time.monotonic() + timeout
    looks = 0
    while time.monotonic() < deadline:
        looks = looks + 1 if _thread_state(pid, tid) == "S" else 0
        if looks == 2:
            return True
        time.sleep(0.001)
    return False


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves shared memory or child processes behind."""
    before = shoal_segments_of(os.getpid())
    yield
    import gc

    gc.collect()
    deadline = time.monotonic() + 5
    while child_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child_pids() == [], "worker processes outlived the pool"
    assert shoal_segments_of(os.getpid()) - before == set(), "shared-memory segments leaked"


def eventually(check, what, timeout=60.0):
    """Waits until ``check()`` is true; fails the test saying ``what`` did not happen in time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
