"""A process-shared FIFO queue in shared memory, in the image of ``multiprocessing.Queue``.

``shoal.queues.Queue`` lives in one shared-memory segment guarded by a robust
process-shared lock, so any number of processes can put and get, and a process
killed in the middle of a put or get (even with SIGKILL) leaves the queue
consistent for everyone else: a message is either entirely in the queue or not
at all.

Differences from ``multiprocessing.Queue``, all deliberate:

* **No feeder thread: put is synchronous.** When ``put`` returns, the object is
  in the queue and visible to every process; errors (an unpicklable object, a
  message that is too large, a closed queue) are raised by ``put`` itself.
  ``join_thread`` and ``cancel_join_thread`` exist only for compatibility.
* **Bounded in bytes.** The queue holds at most ``capacity_bytes`` of pickled
  messages (default 1 MiB; pages are only used as they are touched), and one
  message may be at most that large; a bigger one raises ``ValueError`` at once.
  ``maxsize`` additionally bounds the number of messages, as usual.
* **close() is shared.** Closing the queue closes it for every process: puts
  raise ``ValueError``, gets return what is still queued and then raise
  ``ValueError``. Sleeping getters and putters are woken.
* **Pickled by name.** A queue can be passed to any process (as a ``Process``
  argument, inside another message, ...): the receiver attaches to the same
  shared memory. The creating process owns the segment's name and removes it
  when its ``Queue`` object is garbage-collected; processes already attached
  keep working, but no new process can attach after that.

Objects travel as pickle protocol 5. Out-of-band buffers (numpy arrays, for
example) are copied straight from the object into shared memory, and arrive as
writable arrays backed by the received message: one copy on each side.
"""
from __future__ import annotations

import pickle
import queue
import struct
from typing import Any, Generic, List, Optional, Tuple, TypeVar, Union

from .. import _core

__all__ = ["Queue", "DEFAULT_CAPACITY_BYTES"]

#: The default bound, in bytes, on a queue's contents and on any one message.
DEFAULT_CAPACITY_BYTES: int = 1 << 20

T = TypeVar("T")

# A message is either a plain pickle stream (it starts with the PROTO opcode,
# b"\x80"), or, when pickling produced out-of-band buffers, this layout:
#   header: magic, number of buffers, pickle length; then one u64 length per buffer
#   the pickle stream, then each buffer, each starting at a 16-byte boundary
# so that arrays rebuilt over the buffers are aligned.
# Not the pool's payload format (wire/payload.py, whose buffers are references to
# arena blocks): a queued message must outlive the process that put it, and an
# arena's segments go with their owner, so a queue carries its buffers inline.
_OOB_MAGIC = b"shoalOOB"
_OOB_HEADER = struct.Struct("<8sQQ")
_ALIGN = 16
_ZEROS = bytes(_ALIGN)


def _padding(size: int) -> int:
    return -size % _ALIGN


def _encode(obj: object) -> Tuple[List[Union[bytes, memoryview]], int]:
    """Pickles ``obj`` into message parts; returns them with their total size."""
    buffers: List[pickle.PickleBuffer] = []
    payload = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    if not buffers:
        return [payload], len(payload)
    try:
        raws = [b.raw() for b in buffers]
    except BufferError:  # a non-contiguous buffer: carry everything in-band instead
        payload = pickle.dumps(obj, protocol=5)
        return [payload], len(payload)

    header = _OOB_HEADER.pack(_OOB_MAGIC, len(raws), len(payload))
    header += struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    parts: List[Union[bytes, memoryview]] = []
    size = 0
    chunks: List[Union[bytes, memoryview]] = [header, payload, *raws]
    for chunk in chunks:
        pad = _padding(size)
        if pad:
            parts.append(_ZEROS[:pad])
            size += pad
        parts.append(chunk)
        size += len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
    return parts, size


def _decode(data: bytearray) -> Any:
    """Unpickles one message taken from the queue."""
    if not data.startswith(_OOB_MAGIC):
        return pickle.loads(data)
    _, count, payload_len = _OOB_HEADER.unpack_from(data)
    lengths = struct.unpack_from(f"<{count}Q", data, _OOB_HEADER.size)
    view = memoryview(data)
    pos = _OOB_HEADER.size + 8 * count
    pos += _padding(pos)
    payload = view[pos : pos + payload_len]
    pos += payload_len
    buffers = []
    for n in lengths:
        pos += _padding(pos)
        buffers.append(view[pos : pos + n])
        pos += n
    return pickle.loads(payload, buffers=buffers)


def _attach(name: str) -> "Queue[Any]":
    """Unpickling helper: attaches to the queue named ``name``."""
    return Queue.attach(name)


class Queue(Generic[T]):
    """A FIFO queue shared between processes, like ``multiprocessing.Queue``.

    Args:
        maxsize: the most objects the queue holds at once; ``0`` or less means
            no limit on the count (the queue is still bounded in bytes).
        capacity_bytes: the bytes of pickled objects the queue holds at once,
            and the largest one object may pickle to (each message also costs
            16 bytes of header and padding to 8 bytes).

    Raises:
        ValueError: if ``capacity_bytes`` is less than 1.
        OSError: if the shared memory cannot be created.
    """

    def __init__(self, maxsize: int = 0, *, capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be at least 1, not {capacity_bytes}")
        self._core = _core.SharedQueue.create(capacity_bytes, max(0, maxsize))
        self._capacity = capacity_bytes

    @classmethod
    def attach(cls, name: str) -> "Queue[Any]":
        """Attaches to the existing queue called ``name`` (what unpickling does).

        Raises:
            FileNotFoundError: if no such queue exists (any more).
        """
        self = cls.__new__(cls)
        self._core = _core.SharedQueue.attach(name)
        self._capacity = self._core.capacity_bytes
        return self

    def __reduce__(self) -> Tuple[Any, Tuple[str]]:
        return _attach, (self._core.name,)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"qsize={self.qsize()}"
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r} {state} "
            f"maxsize={self.maxsize} capacity_bytes={self.capacity_bytes}>"
        )

    # --- properties ----------------------------------------------------------

    @property
    def name(self) -> str:
        """The shared-memory name other processes attach by."""
        return self._core.name

    @property
    def maxsize(self) -> int:
        """The most objects the queue holds at once; 0 means no count limit."""
        return self._core.maxsize

    @property
    def capacity_bytes(self) -> int:
        """The bytes the queue holds at once, and the largest one message."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether any process has closed the queue."""
        return self._core.closed

    # --- putting -------------------------------------------------------------

    def put(self, obj: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Puts ``obj`` at the end of the queue.

        The object is pickled and copied into the queue before ``put`` returns.
        If the queue is full, waits for room: forever if ``block`` is true and
        ``timeout`` is None, up to ``timeout`` seconds if given; not at all if
        ``block`` is false.

        Raises:
            queue.Full: if there was no room in time.
            ValueError: if ``obj`` pickles to more than ``capacity_bytes``, or
                the queue is closed.
        """
        parts, size = _encode(obj)
        if size > self._capacity:
            raise ValueError(
                f"cannot put an object that pickles to {size} bytes into a queue whose "
                f"capacity_bytes is {self._capacity}: create the queue with "
                f"Queue(capacity_bytes=...) of at least {size} (room for a few such "
                f"objects is better)"
            )
        if not self._core.put(parts, block, timeout):
            raise queue.Full

    def put_nowait(self, obj: T) -> None:
        """Equivalent to ``put(obj, False)``."""
        self.put(obj, False)

    # --- getting -------------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Removes and returns the object at the front of the queue.

        If the queue is empty, waits for an object: forever if ``block`` is
        true and ``timeout`` is None, up to ``timeout`` seconds if given; not at
        all if ``block`` is false. Waiting releases the GIL and can be
        interrupted with Ctrl-C.

        Raises:
            queue.Empty: if no object came in time.
            ValueError: if the queue is closed and has been drained.
        """
        data = self._core.get(block, timeout)
        if data is None:
            raise queue.Empty
        obj: T = _decode(data)  # what was put: the queue's element type
        return obj

    def get_nowait(self) -> T:
        """Equivalent to ``get(False)``."""
        return self.get(False)

    # --- state ---------------------------------------------------------------

    def qsize(self) -> int:
        """The number of objects in the queue (a snapshot; it may change at once)."""
        return self._core.qsize()

    def empty(self) -> bool:
        """Whether the queue is empty (a snapshot)."""
        return self._core.empty()

    def full(self) -> bool:
        """Whether the queue is full: ``maxsize`` reached, or no bytes left even
        for a tiny object (a snapshot; a big object may not fit earlier)."""
        return self._core.full()

    def close(self) -> None:
        """Closes the queue for every process (see the module docs). Idempotent."""
        self._core.close()

    def join_thread(self) -> None:
        """Does nothing: there is no feeder thread (``put`` is synchronous)."""

    def cancel_join_thread(self) -> None:
        """Does nothing: there is no feeder thread (``put`` is synchronous)."""
