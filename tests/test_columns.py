"""Lists of numbers travel as columns (cpp/include/shoal/ser/number_column.hpp):
what comes out is exactly what went in, type for type, and anything that is
not a plain list of ints or floats still goes through pickle."""
import enum
import functools
import math
import struct

import pytest

import shoal
from shoal import _core
from shoal.wire import payload as wire

import tasks


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


def round_trip(value):
    return wire.unpack(wire.pack(value))


@pytest.mark.parametrize(
    "items",
    [
        list(range(-100, 100)),
        [2**63 - 1, -(2**63), 0, 1, -1] * 4,
        [x * 0.25 for x in range(-50, 50)],
        [math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308] * 3,
    ],
)
def test_int_and_float_lists_travel_as_columns_and_come_back_equal(items):
    payload = wire.pack(items)
    assert payload.startswith(wire.NUMBER_COLUMN)
    back = wire.unpack(payload)
    assert back == items
    assert [type(x) for x in back] == [type(x) for x in items]
    assert [math.copysign(1, x) for x in back if x == 0] == [math.copysign(1, x) for x in items if x == 0]


def test_nan_keeps_its_bits():
    items = [math.nan, struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]] * 10
    back = round_trip(items)
    assert [struct.pack("<d", x) for x in back] == [struct.pack("<d", x) for x in items]


@pytest.mark.parametrize(
    "items",
    [
        [True, False] * 10,  # bool is an int subclass: must come back as bool
        [Colour.RED, Colour.GREEN] * 10,
        [2**64] + list(range(20)),  # past 64 bits
        list(range(20)) + [-(2**63) - 1],
        list(range(20)) + [1.5],  # mixed
        [1.5] * 20 + [2],
        list(range(10)),  # short: pickle is as good
        [],
    ],
)
def test_other_lists_are_pickled_and_keep_their_types(items):
    payload = wire.pack(items)
    assert not payload.startswith(wire.NUMBER_COLUMN)
    back = round_trip(items)
    assert back == items
    assert [type(x) for x in back] == [type(x) for x in items]


def test_a_malformed_column_is_refused_with_a_clear_error():
    good = _core.encode_numbers(list(range(100)))
    for bad in (good[:-1], good + b"\0", good[:16], good[:8] + b"\x09" + good[9:]):
        with pytest.raises(ValueError, match="number column"):
            _core.decode_numbers(bad)
    assert _core.decode_numbers(memoryview(good)) == list(range(100))


def test_encode_refuses_what_is_not_a_plain_list():
    assert _core.encode_numbers((1, 2, 3)) is None
    assert _core.encode_numbers("abc") is None
    assert _core.encode_numbers([]) is None


def test_maps_of_numbers_give_what_serial_python_gives():
    items = list(range(-5000, 5000))
    with shoal.Pool(2) as pool:
        assert pool.map(tasks.square, items) == [x * x for x in items]
        floats = [x / 7 for x in items]
        assert pool.map(tasks.identity, floats) == floats
        assert pool.map(tasks.identity, [True] * 100) == [True] * 100
        big = [2**70 + x for x in range(100)]
        assert pool.map(tasks.identity, big) == big


def test_each_item_of_a_chunk_runs_once_even_when_some_fail(tmp_path):
    path = tmp_path / "ran.txt"
    with shoal.Pool(2) as pool:
        it = pool.imap(functools.partial(tasks.append_line, path=str(path)), range(40), chunksize=20)
        outcomes = []
        for _ in range(40):
            try:
                outcomes.append(it.next(timeout=30))
            except ValueError as exc:
                outcomes.append(str(exc))
    assert outcomes == [f"item {x} is a multiple of 5" if x % 5 == 0 else x for x in range(40)]
    assert sorted(int(line) for line in path.read_text().split()) == list(range(40))
