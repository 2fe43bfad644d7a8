"""Tasks for bench/chaos.py (importable by every library's workers)."""
import os
import signal
import time


def doubled_or_die_once(x, marker_dir):
    """Returns 2x, but kills its own worker the first time a marked x runs."""
    marker = os.path.join(marker_dir, f"{x}.doomed")
    try:
        os.rename(marker, marker + ".done")
    except FileNotFoundError:
        return 2 * x
    os.kill(os.getpid(), signal.SIGKILL)


def start_time_after_busy(seconds):
    """Reports when it started (wall clock), then busy-waits."""
    started = time.time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return started, os.getpid()
