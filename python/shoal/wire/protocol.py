"""The pool protocol's constants, defined once in C++ (cpp/include/shoal/wire/protocol.hpp)
and read here from the extension: frame kinds, job statuses, call modes."""
from __future__ import annotations

from .. import _core

_p = _core.protocol

# Frame kinds, parent -> worker.
DEFINE_FUNCTION, DROP_FUNCTION, INITIALIZE, JOB = _p.DEFINE_FUNCTION, _p.DROP_FUNCTION, _p.INITIALIZE, _p.JOB
# How a job ended.
OK, ERROR, WORKER_LOST, CANCELLED = _p.OK, _p.ERROR, _p.WORKER_LOST, _p.CANCELLED
BROKEN, TIMED_OUT, MEMORY_EXCEEDED, LOG = _p.BROKEN, _p.TIMED_OUT, _p.MEMORY_EXCEEDED, _p.LOG
# What a job's payload holds: one call's (args, kwargs), or a map chunk's items (each one argument, or a tuple of them).
CALL, MAP_ONE, MAP_STAR = _p.CALL, _p.MAP_ONE, _p.MAP_STAR
