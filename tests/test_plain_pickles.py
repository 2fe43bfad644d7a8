"""A submit's arguments and a task's result that are plain values (numbers,
strings, bytes, tuples, lists and dicts of them) are pickled by the engine itself
(cpp/include/shoal/wire/scalar_pickle.hpp): pickle.loads gives back exactly
what went in, type for type, and anything else still goes through pickle."""
import enum
import math
import pickle

import pytest

import shoal
from shoal import _core

import tasks


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


PLAIN = [
    None, True, False,
    0, 1, 255, 256, 65535, 65536, -1, -128, -129, 2**31 - 1, 2**31, -2**31, -2**31 - 1,
    2**32, 2**40, -2**40, 2**55, -2**55 - 7, 2**63 - 1, -2**63,
    0.0, -0.0, 1.5, -2.25e-300, 1e-310, float("inf"), float("-inf"),
    "", "a", "é" * 200, "x" * 300, "日本語", "\x00",
    b"", b"\x00" * 255, b"y" * 256, b"z" * 65536, "s" * 65536,
    (), (1,), (1, "2"), (1, 2, 3), (1, 2, 3, 4, 5), ((1, 2), ("a", b"b")),
    {}, {"a": 1, "b": (2, 3)}, {1: "one", 2.5: None},
    [], [1, "a", None], ([1, 2], [b"x"]), {"k": [1.5]},
]


def same(a, b):
    """Equal and of the same types all the way down (True is not 1, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.copysign(1, a) == math.copysign(1, b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: repr(v)[:30])
def test_plain_value_loads_as_itself(value):
    data = _core.pickle_value(value)
    assert data is not None
    assert data.startswith(b"\x80\x05")  # the workers' and the result thread's test for a plain pickle
    assert same(pickle.loads(data), value)


def test_nan_loads_as_nan():
    assert math.isnan(pickle.loads(_core.pickle_value(float("nan"))))


NOT_PLAIN = [
    2**64, -2**63 - 1, 1 + 2j, "\ud800", b"z" * 65537, "s" * 65537, ("s" * 65537,),
    {2, 3}, bytearray(b"x"), Colour.RED, Name("n"), object(), (((1,),),), ((1, [2]),), [[[1]]], [1, [2, [3]]],
    [str(i) for i in range(64)],
]


@pytest.mark.parametrize("value", NOT_PLAIN, ids=lambda v: repr(v)[:30])
def test_anything_else_is_left_to_pickle(value):
    assert _core.pickle_value(value) is None


def test_a_call_loads_as_its_args_and_kwargs():
    args, kwargs = (1, "a", (2.5, None)), {"key": b"v", "flag": True}
    loaded = pickle.loads(_core.pickle_call(args, kwargs))
    assert same(loaded, (args, kwargs))
    assert same(pickle.loads(_core.pickle_call((1, [2]), {})), ((1, [2]), {}))
    assert _core.pickle_call((1, [[2]]), {}) is None  # deeper than two levels
    assert _core.pickle_call((1,), {"k": object()}) is None


def test_an_object_given_twice_loads_as_one_object_twice():
    # As pickle's memo keeps it: f(s, s) sees `a is b`, as with the stdlib's pools.
    s, b, t, d, l = "x" * 50, b"y" * 50, (1, "z"), {"k": 1}, [1, 2]
    args, kwargs = pickle.loads(_core.pickle_call((s, s, b, b, t, t, d, d, (s, b), l, l), {"again": s}))
    assert args[0] is args[1] and args[2] is args[3] and args[4] is args[5] and args[6] is args[7]
    assert args[8][0] is args[0] and args[8][1] is args[2] and kwargs["again"] is args[0]
    assert args[9] is args[10] and args[9] is not l
    assert same(args, (s, s, b, b, t, t, d, d, (s, b), l, l))
    assert args[0] is not s  # a copy, loaded


def test_more_objects_than_the_memo_holds_go_to_pickle():
    # 63 strings and their tuple fill the memo's 64.
    assert _core.pickle_value(tuple(str(i) for i in range(63))) is not None
    assert _core.pickle_value(tuple(str(i) for i in range(64))) is None


@pytest.fixture(scope="module")
def ex():
    with shoal.Executor(2) as pool:
        yield pool


@pytest.mark.parametrize("value", PLAIN + [2**64, 1 + 2j, "\ud800", b"z" * 70_000, Colour.RED, Name("n"), [[[1]]]],
                         ids=lambda v: repr(v)[:30])
def test_a_task_gets_and_returns_exactly_its_values(ex, value):
    # tasks.identity returns its argument: it travels both ways.
    got = ex.submit(tasks.identity, value).result(timeout=60)
    assert same(got, value)


def test_keyword_arguments_arrive_as_given(ex):
    got = ex.submit(tasks.echo_call, 1, "two", three=3.0, four=(4, b"4")).result(timeout=60)
    assert same(got, ((1, "two"), {"three": 3.0, "four": (4, b"4")}))
