import multiprocessing as mp
import os

import pytest

import shoal


def _write_into(name, payload):
    seg = shoal.SharedSegment.attach(name)
    seg.buf[: len(payload)] = payload
    seg.close()


def test_segment_is_shared_with_a_spawned_process():
    seg = shoal.SharedSegment.create(4096)
    assert seg.name.startswith(f"shoal-{os.getpid()}-")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_write_into, args=(seg.name, b"written by child"))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert bytes(seg.buf[:16]) == b"written by child"
    seg.close()
    assert not os.path.exists(f"/dev/shm/{seg.name}")


def test_attach_to_missing_name_raises_file_not_found_naming_it():
    with pytest.raises(FileNotFoundError, match="shoal-1-nope"):
        shoal.SharedSegment.attach("shoal-1-nope")


def test_closed_segment_refuses_buffer_access():
    seg = shoal.SharedSegment.create(64)
    seg.close()
    assert seg.closed
    with pytest.raises(ValueError):
        seg.buf
