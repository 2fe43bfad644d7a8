"""How a job ended, from its status and payload to a value or an exception:
the one decode of the statuses the engine reports (wire.protocol)."""
from __future__ import annotations

import logging
from typing import Any, Callable

from ..errors import BrokenPoolError, MemoryLimitError, WorkerLostError
from ..wire.payload import unpack
from ..wire.pickling import loads_exception, transfer_error
from ..wire.protocol import CANCELLED, ERROR, MEMORY_EXCEEDED, OK, TIMED_OUT, WORKER_LOST

# Outcomes of tasks run inline by the serial runtime: the payload is the object itself.
INLINE_OK, INLINE_ERROR = 100, 101

log = logging.getLogger("shoal")
log.addHandler(logging.NullHandler())  # a library logs; the application decides where it goes

#: What a job's outcome carries: the payload's bytes from a worker; from the
#: serial runtime (INLINE_OK / INLINE_ERROR) the result or exception itself.
Payload = Any
#: Called with a job's (status, run time in ns, payload) once it ends.
Handler = Callable[[int, int, Payload], None]


class Cancelled(Exception):
    """Internal marker: the job was cancelled before it ran."""


def run_handler(handler: Handler, status: int, run_ns: int, payload: Payload) -> None:
    """Delivers a job's outcome; a failing user callback is reported, never raised
    into whichever thread happens to deliver (the result thread, or a waiter)."""
    try:
        handler(status, run_ns, payload)
    except (Exception, SystemExit):  # noqa: BLE001 - Ctrl-C in the caller's own thread still goes up
        report_handler_failure()


def report_handler_failure() -> None:
    import traceback

    traceback.print_exc()
    log.error("a result callback raised; the pool goes on", exc_info=True)


def decode(status: int, payload: Payload) -> tuple[bool, Any]:
    """(True, value) for a result; (False, exception) for every other ending."""
    try:
        return _decode(status, payload)
    except BaseException as exc:  # noqa: BLE001 - e.g. a class the parent cannot import; SystemExit too
        return False, transfer_error("the task's result", exc)


def _decode(status: int, payload: Payload) -> tuple[bool, Any]:
    if status == OK:
        return True, unpack(payload, adopt=True)  # the result's objects own its arena blocks
    if status == ERROR:
        return False, loads_exception(payload)
    if status == WORKER_LOST:
        return False, WorkerLostError(payload.decode())
    if status == INLINE_OK:
        return True, payload
    if status == INLINE_ERROR:
        return False, payload
    if status == CANCELLED:
        return False, Cancelled()
    if status == TIMED_OUT:
        return False, TimeoutError(payload.decode())
    if status == MEMORY_EXCEEDED:
        return False, MemoryLimitError(payload.decode())
    return False, BrokenPoolError(payload.decode())


