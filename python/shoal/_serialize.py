"""Pickling for tasks: protocol 5, cloudpickle where plain pickle cannot go.

Callables defined in ``__main__``, lambdas and closures are pickled by value
(cloudpickle); everything else by reference, which is much faster.
"""
from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle

from .errors import RemoteError, RemoteTraceback

PROTOCOL = 5
loads = pickle.loads
# What a protocol 5 pickle starts with (the PROTO opcode and its version);
# shoal's other payloads (number columns, out-of-band packs) start otherwise.
PICKLE_PROTOCOL_5 = b"\x80\x05"


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _by_value(obj: Any, what: str) -> bytes:
    try:
        return cloudpickle.dumps(obj, PROTOCOL)
    except Exception as error:
        raise TypeError(
            f"cannot send {what} {_describe(obj)} to a worker process: it cannot be pickled "
            f"({type(error).__name__}: {error})"
        ) from error


def dumps(obj: Any, what: str = "argument") -> bytes:
    """Pickle `obj`; raise TypeError saying what could not be pickled."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return _by_value(obj, what)


def dumps_callable(fn: Any) -> bytes:
    """Pickle a task's callable; by value when the worker could not import it."""
    if not callable(fn):
        raise TypeError(f"{_describe(fn)} is not callable")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module == "__main__" or "<lambda>" in qualname or "<locals>" in qualname:
        return _by_value(fn, "the callable")
    return dumps(fn, "the callable")


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle an exception with its traceback text; RemoteError if it cannot be pickled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps((exc, tb), PROTOCOL)
        pickle.loads(blob)  # an exception whose __reduce__ is broken fails here, not in the caller
        return blob
    except Exception:
        return pickle.dumps((RemoteError(type(exc).__qualname__, str(exc), tb), tb), PROTOCOL)


def loads_exception(payload: bytes) -> BaseException:
    exc, tb = loads(payload)
    exc.__cause__ = RemoteTraceback(tb)
    return exc
