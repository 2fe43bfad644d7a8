"""Pickling for tasks: protocol 5, cloudpickle where plain pickle cannot go.

What a worker can import travels by reference; the rest by value (cloudpickle).
Objects of the caller's ``__main__`` (classes, enums, functions) are the hard
case: a worker's ``__main__`` is the user's script too (forked from the caller,
or prepared as multiprocessing's spawn does), but it may lack what was defined
under ``if __name__ == "__main__":`` or after the pool started. So a
``__main__`` class or function travels as a *main reference* (``_main_ref``):
its qualified name, a token, and a by-value copy. The worker uses its own
``__main__`` object of that name when it has one (so ``isinstance``, ``==`` and
enum identity hold against instances pickled by reference), else the copy,
which it then files into its ``__main__`` under the token and the name, so
every later task and every plain pickle in that worker sees the same object.
"""
from __future__ import annotations

import io
import itertools
import os
import pickle
import sys
import traceback
import types
import weakref
from typing import Any, Callable, Optional, Tuple

import cloudpickle

from ..errors import RemoteError, RemoteTraceback, TransferError

PROTOCOL = 5
loads = pickle.loads
# What a protocol 5 pickle starts with (the PROTO opcode and its version);
# shoal's other payloads (number columns, out-of-band packs) start otherwise.
PICKLE_PROTOCOL_5 = b"\x80\x05"


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


#: What pickle's ``buffer_callback`` is given; a true answer keeps the buffer in the pickle.
BufferCallback = Callable[[pickle.PickleBuffer], object]

# --- __main__ objects -------------------------------------------------------

#: A main reference's token: (pid of the process that made the copy, a number).
Token = Tuple[int, int]

_tokens = itertools.count(1)
# Per __main__ object of this process: (token, by-value copy), made once.
_main_copies: "weakref.WeakKeyDictionary[Any, tuple[Token, bytes]]" = weakref.WeakKeyDictionary()
# In a worker: the object each token resolved to.
_resolved: dict[Token, Any] = {}


def _main_attribute(qualname: str) -> Any:
    obj: Any = sys.modules["__main__"]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_main_global(obj: object) -> bool:
    """A class or function of ``__main__`` reachable there by its qualified name."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    if not (isinstance(obj, type) or isinstance(obj, types.FunctionType)):
        return False
    try:
        return _main_attribute(obj.__qualname__) is obj
    except (AttributeError, KeyError):
        return False


def _main_ref(qualname: str, token: Token, copy: bytes) -> Any:
    """Unpickling side of a main reference (see the module's docs)."""
    found = _resolved.get(token)
    if found is not None:
        return found
    try:
        found = _main_attribute(qualname)
    except (AttributeError, KeyError):
        found = pickle.loads(copy)
        if "." not in qualname:
            setattr(sys.modules["__main__"], qualname, found)
    _resolved[token] = found
    return found


class _MainAwarePickler(cloudpickle.Pickler):
    """cloudpickle, with ``__main__`` classes and functions as main references."""

    def __init__(
        self, file: io.BytesIO, buffer_callback: Optional[BufferCallback] = None, by_value: tuple[Any, ...] = ()
    ) -> None:
        super().__init__(file, PROTOCOL, buffer_callback=buffer_callback)
        self._by_value = by_value  # objects whose copy is being made: inline, by value

    def reducer_override(self, obj: Any) -> Any:
        if obj.__class__ in _PLAIN or any(obj is o for o in self._by_value) or not _is_main_global(obj):
            return super().reducer_override(obj)
        token, copy = _main_copy(obj, self._by_value)
        return _main_ref, (obj.__qualname__, token, copy)


_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset})


def _main_copy(obj: Any, outer: tuple[Any, ...]) -> tuple[Token, bytes]:
    made = _main_copies.get(obj)
    if made is None:
        stream = io.BytesIO()
        _MainAwarePickler(stream, by_value=outer + (obj,)).dump(obj)
        made = ((os.getpid(), next(_tokens)), stream.getvalue())
        _main_copies[obj] = made
    return made


def cloudpickle_dumps(obj: Any, buffer_callback: Optional[BufferCallback] = None) -> bytes:
    """``cloudpickle.dumps(obj, 5)``, with ``__main__`` objects as main references."""
    stream = io.BytesIO()
    _MainAwarePickler(stream, buffer_callback=buffer_callback).dump(obj)
    return stream.getvalue()


# --- callables and other payloads ---------------------------------------------


def _by_value(obj: Any, what: str, buffer_callback: Optional[Callable[[pickle.PickleBuffer], Any]] = None) -> bytes:
    try:
        return cloudpickle_dumps(obj, buffer_callback)
    except Exception as error:
        _note(error, f"when pickling {what} {_describe(obj)}")
        raise


def _note(error: BaseException, text: str) -> None:
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(text)


def dumps(obj: Any, what: str = "argument", buffer_callback: Optional[Callable[[pickle.PickleBuffer], Any]] = None) -> bytes:
    """Pickle `obj` (cloudpickle if plain pickle cannot); a failure is the
    pickler's own exception, with a note saying what could not be pickled."""
    try:
        return pickle.dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
    except Exception:
        return _by_value(obj, what, buffer_callback)


def by_reference(fn: object) -> bool:
    """Whether ``fn`` is a module-level function or class (its pickle names it,
    so it can be sent once per worker and keyed by identity). Anything else
    (bound methods, partials, closures, lambdas, callable instances) carries
    state that may change between submissions: it is keyed by its bytes."""
    if not (isinstance(fn, (types.FunctionType, types.BuiltinFunctionType, type))):
        return False
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if module is None or "<" in qualname:
        return False
    if module == "__main__":
        return _is_main_global(fn)
    try:
        owner: object = sys.modules[module]
        for part in qualname.split("."):
            owner = getattr(owner, part)
        return owner is fn
    except (KeyError, AttributeError):
        return False


def dumps_callable(fn: object, buffer_callback: Optional[Callable[[pickle.PickleBuffer], Any]] = None) -> bytes:
    """Pickle a task's callable: by reference what the worker can import,
    ``__main__`` objects as main references, the rest by value.
    ``buffer_callback``: pickle's, for out-of-band buffers (payload.pack_callable)."""
    if not callable(fn):
        raise TypeError(f"{type(fn).__name__!r} object is not callable")  # as calling it says
    if getattr(fn, "__module__", None) == "__main__" or "<" in getattr(fn, "__qualname__", "<"):
        return _by_value(fn, "the callable", buffer_callback)
    return dumps(fn, "the callable", buffer_callback)


def exception_text(exc: BaseException) -> str:
    """An exception's traceback, as Python prints it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def dumps_exception(exc: BaseException, tb: Optional[str] = None) -> bytes:
    """Pickle an exception with its traceback text (`tb`, else formatted here);
    RemoteError if it cannot be pickled."""
    if tb is None:
        tb = exception_text(exc)
    try:
        blob = pickle.dumps((exc, tb), PROTOCOL)
        pickle.loads(blob)  # an exception whose __reduce__ is broken fails here, not in the caller
        return blob
    except Exception:
        return pickle.dumps((RemoteError(type(exc).__qualname__, str(exc), tb), tb), PROTOCOL)


def loads_exception(payload: bytes) -> BaseException:
    exc: BaseException
    tb: str
    exc, tb = loads(payload)
    original = getattr(exc, "original", None) if isinstance(exc, TransferError) else None
    if isinstance(original, BaseException):
        original.__cause__ = RemoteTraceback(tb)
        exc.__cause__ = original
    else:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def as_pickling_error(error: BaseException) -> BaseException:
    """``error`` if it is an Exception; a SystemExit or KeyboardInterrupt that
    a ``__reduce__`` raised becomes a PicklingError (its ``__cause__``), so it
    never stops the thread that receives it as such."""
    if isinstance(error, Exception):
        return error
    wrapped = pickle.PicklingError(f"pickling raised {error!r}")
    wrapped.__cause__ = error
    return wrapped


def transfer_error(what: str, error: BaseException) -> BaseException:
    """The TransferError for ``what`` (e.g. "the task's arguments") failing to unpickle with ``error``."""
    wrapped = TransferError(f"{what} could not be unpickled: {type(error).__name__}: {error}", error)
    wrapped.__cause__ = error
    return wrapped
