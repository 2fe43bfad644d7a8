import os

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


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves shared memory or child processes behind."""
    before = shoal_segments_of(os.getpid())
    yield
    import gc
    import time

    gc.collect()
    deadline = time.monotonic() + 5
    while child_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child_pids() == [], "worker processes outlived the pool"
    assert shoal_segments_of(os.getpid()) - before == set(), "shared-memory segments leaked"
