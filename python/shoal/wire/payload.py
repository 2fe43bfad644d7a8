"""Pickle protocol 5 with the big buffers in a shared-memory arena.

``pack(obj, arena)`` pickles ``obj``; every out-of-band buffer (numpy arrays,
anything that pickles through ``PickleBuffer``; pickle keeps bytes and
bytearrays in band) of at least
``threshold`` bytes is copied once into a block of ``arena`` and left out of
the pickle. ``unpack(payload, arena)`` rebuilds the object over zero-copy,
copy-on-write views of those blocks (a private ``MAP_PRIVATE`` mapping of the
block's pages in the receiving process): a numpy array comes back writable,
as from a plain pickle, its unwritten pages those of the arena; a write
copies the page it touches into the receiver's own memory and never reaches
the block, so the sender and every other receiver of the payload keep the
original. A buffer the sender had read-only comes back read-only (pickle's
own rule). Smaller buffers stay in the pickle. Non-contiguous arrays are
pickled in-band by numpy itself, and object arrays pickle their elements
normally. A ``shoal.SharedArray`` is not copied at all: it pickles by
reference, and the payload keeps it alive.

Payload layout (little-endian). A list of 16 or more numbers, all ints
within 64 bits or all floats, is a number column (magic ``b"shoalNC1"``, see
cpp/include/shoal/wire/number_column.hpp), not a pickle. Any other payload
without a block is the plain pickle (starting with the PROTO opcode
``b"\\x80"``). Otherwise it is packed (cpp/include/shoal/wire/packed_payload.hpp
defines it; ``_core.encode_packed``/``decode_packed`` write and read it)::

    magic b"shoalOB1" | u32 names | u32 entries | u64 pickle length
    names x (u16 length, UTF-8 arena name)         # names[0]: the arena given to pack()
    entries x (u16 arena index, u8 kind, u8 block flags, u32 segment,
               u64 offset, u64 size, u64 generation, u64 view offset, u64 view length)
    the pickle

``kind`` is ``BUFFER`` (an out-of-band buffer, handed to the unpickler in
order) or ``HELD`` (a SharedArray's block the payload keeps alive).

References: who releases what
-----------------------------
* A payload returned by ``pack()`` OWNS one reference on every block it lists,
  and nobody else holds those references. The packing process keeps no
  mapping bookkeeping for them, so the payload may be released anywhere.
  Such a reference is dropped with ``Arena.release_disowned`` (never
  ``Arena.release``, which also takes back a pin of this process: that of a
  live view of the same block, whose huge segment would be unmapped under it).
* ``unpack(payload, arena)`` (``adopt=False``): the objects it builds take
  references of their own (dropped when they are garbage-collected, in
  whatever process); the payload's stay. Use this where the same payload may
  be unpacked again (a job's arguments: a retry re-sends them), and call
  ``release(payload)`` exactly once when the payload is done with. A pool
  releases a job's argument payload when the job's result arrives, or when
  the job is cancelled or fails for good.
* ``unpack(payload, arena, adopt=True)``: the objects take over the payload's
  references (the HELD ones are released once the SharedArrays they keep
  alive have taken their own). The payload is spent: never unpack or release
  it again. Use this for a result, in the process that receives it; the
  blocks are then freed when the caller's objects die.
* A payload that is never unpacked (a result nobody wants, a job cancelled
  before it ran) must be ``release()``-d.
* A process that dies holding references (a worker killed in the middle of a
  task) leaks those blocks until the arena's owner destroys the arena; a
  result payload lost with its worker, likewise.

Every view ``unpack()`` makes is remembered (weakly, ``shm.arena.track``); when
the interpreter exits normally, the references it still holds on arenas that
other processes own are dropped, so that a short-lived child does not pin its
parent's memory.
"""
from __future__ import annotations

import contextlib
import pickle
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Tuple, Union

from .. import _core
from ..shm.arena import attach_all, default_arena, track
from .pickling import cloudpickle_dumps, dumps_callable

# Plain values (numbers, strings, bytes, tuples, lists and dicts of them)
# pickled by the engine in one call, None for anything else: pack()'s first
# try, which the hottest callers (a submit's ((x,), {}), a tiny task's result)
# make themselves, where pickle.dumps()'s set-up costs more than the pickle.
pickle_call = _core.pickle_call
pickle_value = _core.pickle_value

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

__all__ = ["DEFAULT_THRESHOLD", "BufferMemo", "pack", "pack_callable", "unpack", "release", "blocks", "is_packed"]

#: Buffers of at least this many bytes go to the arena; smaller ones stay in the pickle.
DEFAULT_THRESHOLD: int = 64 * 1024

PROTOCOL = 5
MAGIC: bytes = _core.PACKED_MAGIC
BUFFER, HELD = _core.PACKED_BUFFER, _core.PACKED_HELD
NUMBER_COLUMN = _core.NUMBER_COLUMN_MAGIC
# Lists this long or longer whose items are all ints (within 64 bits) or all
# floats travel as a column of 8-byte words instead of a pickle: several times
# cheaper to write and to read back. Shorter ones gain nothing.
_COLUMN_MIN = 16


Entry = Tuple[int, int, _core.Block, int, int]  # arena index, kind, Block, view offset, view length

# --- packing -----------------------------------------------------------------

_local = threading.local()


class _ArenaFailure(Exception):
    """Carries an arena's error (MemoryError, a closed arena) out of pickling,
    so that it is not mistaken for an object that cannot be pickled."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Probe:
    """Stands in for _Packing during pack()'s fast pass: notes whether anything
    needs the arena (a big buffer, a SharedArray to hold)."""

    __slots__ = ("clean", "threshold")

    def __init__(self) -> None:
        self.clean = True

    def buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        # Any buffer at all sends pack() down the full path, which decides by
        # size; False keeps this pass from copying the buffer into its pickle.
        self.clean = False
        return False

    def hold(self, view: _core.BlockView) -> None:
        self.clean = False


class BufferMemo:
    """The big buffers one map has copied into the arena, by the object that
    exports them: an array repeated in many items (``map(f, [image] * n, ks)``)
    is copied once, and every later chunk's payload takes a reference on that
    block instead of a copy of its own.

    The memo holds no memory: a copy lives as long as some payload holds it
    (a chunk in flight), and an object met again after its copy was freed is
    copied anew. Its entries are weak (a map over fresh arrays keeps none
    alive), at most ``SIZE`` of them, the most recently used.

    Never stale: with ``verify``, an object met again is compared with its
    copy first (memcmp without the GIL: a fraction of a copy into fresh
    shared pages, but on the caller's CPU), and one whose bytes changed (a
    generator that refills one buffer between items) is copied anew. A map
    whose input is all there when it is called (a list: it has a length)
    needs no check: its items go as they were when the map began, as the
    stdlib pickles them some time after the call. Only within one map; each
    separate submit copies. Thread-safe.
    """

    SIZE = 8

    def __init__(self, verify: bool = True) -> None:
        self._verify = verify
        # Reentrant: a garbage collection while the lock is held (any allocation)
        # may free an exporter whose weak reference's callback (_forget) locks too.
        self._lock = threading.RLock()
        # id(exporter) -> (weak reference to it, the copy: block, view offset, view length)
        self._copies: dict[int, Tuple[weakref.ref[Any], _core.Block, int, int]] = {}

    def take(self, arena: _core.Arena, exporter: object, raw: memoryview) -> Optional[_Shared]:
        """A reference for a payload on the copy of ``exporter``'s buffer
        ``raw`` (disowned, as a payload's are), if one is still live and holds
        the same bytes; None if it must be copied."""
        key = id(exporter)
        with self._lock:
            entry = self._copies.get(key)
            if entry is None or entry[0]() is not exporter or entry[3] != raw.nbytes:
                return None
            self._copies[key] = self._copies.pop(key)  # most recently used last
        _, block, offset, length = entry
        if not arena.try_retain(block):
            return None  # every payload that held it has ended: it was freed
        arena.disown(block)  # the payload's reference from here on (dropped with release_disowned)
        if self._verify:
            copy = arena.view(block, offset=offset, length=length)
            same = _core.same_bytes(raw, copy)
            copy.close()
            if not same:  # refilled since: the item goes as it is now
                arena.release_disowned(block)
                return None
        return _Shared(block, offset, length)

    def remember(self, exporter: object, view: _core.BlockView) -> None:
        """``view`` (a payload's, about to be detached into it) is the copy of ``exporter``'s buffer."""
        key = id(exporter)
        try:
            ref = weakref.ref(exporter, lambda _, key=key: self._forget(key))  # type: ignore[misc]
        except TypeError:  # no weak references to it: its id could be reused after it dies
            return
        with self._lock:
            self._copies.pop(key, None)
            self._copies[key] = (ref, view.block, view.offset, view.nbytes)
            while len(self._copies) > self.SIZE:
                del self._copies[next(iter(self._copies))]

    def _forget(self, key: int) -> None:
        with self._lock:
            self._copies.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._copies.clear()

    def __len__(self) -> int:
        return len(self._copies)


class _Shared:
    """A buffer of this payload whose block another payload made: this one
    holds its own, disowned reference on it."""

    __slots__ = ("block", "offset", "length")

    def __init__(self, block: _core.Block, offset: int, length: int) -> None:
        self.block, self.offset, self.length = block, offset, length


class _Packing:
    """One pack() call: the blocks it made and the references it took."""

    def __init__(self, arena: _core.Arena, threshold: int, memo: Optional[BufferMemo] = None) -> None:
        self.arena = arena
        self.threshold = threshold
        self.memo = memo
        self.views: List[Union[_core.BlockView, _Shared]] = []  # the copies, in the pickle's order
        self.held: List[Tuple[_core.Arena, _core.Block]] = []  # references taken for SharedArrays

    def buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        # Returning True keeps the buffer in the pickle; False leaves it out of band.
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in-band (pickle itself says if it cannot)
            return True
        if raw.nbytes < self.threshold:
            return True
        try:
            shared = None if self.memo is None else self.memo.take(self.arena, raw.obj, raw)
            if shared is not None:
                self.views.append(shared)
            else:
                copy = self.arena.store(raw)
                self.views.append(copy)
                if self.memo is not None:
                    self.memo.remember(raw.obj, copy)
        except Exception as error:  # noqa: BLE001
            raise _ArenaFailure(error) from None
        return False

    def hold(self, view: _core.BlockView) -> None:
        arena, block = view.arena, view.block
        arena.retain(block)
        arena.disown(block)  # the reference belongs to the payload, not to this process
        self.held.append((arena, block))

    def discard(self) -> None:
        views, self.views = self.views, []
        for view in views:
            if isinstance(view, _Shared):
                self.arena.release_disowned(view.block)
        views.clear()  # each BlockView releases its block
        held, self.held = self.held, []
        for arena, block in held:
            # Disowned in hold(): release() would take the pin of the SharedArray being pickled.
            arena.release_disowned(block)

    def finish(self, pickled: bytes) -> bytes:
        if not self.views and not self.held:
            return pickled
        names = [self.arena.name]
        index = {self.arena.name: 0}
        entries: List[Entry] = []
        for view in self.views:
            if isinstance(view, _Shared):
                entries.append((0, BUFFER, view.block, view.offset, view.length))
            else:
                offset, length = view.offset, view.nbytes
                entries.append((0, BUFFER, view.detach(), offset, length))
        self.views.clear()
        for arena, block in self.held:
            i = index.setdefault(arena.name, len(names))
            if i == len(names):
                names.append(arena.name)
            entries.append((i, HELD, block, 0, block.size))
        self.held.clear()
        return _encode(names, entries, pickled)


def hold_for_payload(view: _core.BlockView) -> bool:
    """Called by objects that pickle by reference (SharedArray): if a pack() is
    under way in this thread, the payload takes a reference on the view's block
    so the block outlives its sender. Returns whether one was taken."""
    stack: Optional[List[Union[_Probe, _Packing]]] = getattr(_local, "stack", None)
    if not stack:
        return False
    stack[-1].hold(view)
    return True


def _describe(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


#: Types whose values never hold an out-of-band buffer or a SharedArray: plain pickles.
SCALAR_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes})


_NOT_SCALARS = object()


def _scalar_copy(obj: Any, depth: int = 2) -> Any:
    """``obj`` as it is now, if it is a small list, tuple or dict (8 items at
    most) nesting scalars two levels deep: a copy of its lists and dicts, its
    scalars shared, and a tuple that holds neither itself; else _NOT_SCALARS.
    One pass that checks and copies: this runs once per item of a lazy map."""
    kind = type(obj)
    if kind is list or kind is tuple:
        if len(obj) > 8:
            return _NOT_SCALARS
        items = []
        copied = kind is list
        for item in obj:
            if type(item) not in SCALAR_TYPES:
                copy = _scalar_copy(item, depth - 1) if depth > 1 else _NOT_SCALARS
                if copy is _NOT_SCALARS:
                    return _NOT_SCALARS
                copied = copied or copy is not item
                item = copy
            items.append(item)
        if not copied:
            return obj  # a tuple of scalars (a zip() item): nothing in it can change
        return items if kind is list else tuple(items)
    if kind is dict:
        if len(obj) > 8:
            return _NOT_SCALARS
        copy = {}
        for key, value in obj.items():
            if type(key) not in SCALAR_TYPES:
                return _NOT_SCALARS
            if type(value) not in SCALAR_TYPES:
                value = _scalar_copy(value, depth - 1) if depth > 1 else _NOT_SCALARS
                if value is _NOT_SCALARS:
                    return _NOT_SCALARS
            copy[key] = value
        return copy
    return _NOT_SCALARS


class FrozenItem:
    """A map's input item pickled at the moment it was read: it unpickles as
    that item, whatever the caller's generator did to the object afterwards
    (a refilled buffer, a reused dict). The stdlib's ``imap`` pickles each item
    before reading the next; a chunk of many items is pickled only once all
    are read, so those that can change are frozen as they come."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> Tuple[Any, Tuple[bytes]]:
        return pickle.loads, (self.data,)


def thaw(item: FrozenItem) -> Any:
    """The item a FrozenItem froze (what unpickling it gives)."""
    return pickle.loads(item.data)


def freeze_item(item: Any) -> Any:
    """``item`` itself if nothing can change it (or it is a SharedArray), its
    small containers of scalars copied, else a FrozenItem of its pickle now;
    None if it cannot be frozen cheaply (it holds a big buffer, a SharedArray,
    or needs cloudpickle): the caller then packs it at once, before reading on."""
    if type(item) in SCALAR_TYPES:
        return item
    copy = _scalar_copy(item)  # small containers of scalars: copies of what could change
    if copy is not _NOT_SCALARS:
        return copy
    if getattr(type(item), "_shoal_by_reference", False):
        return item  # a SharedArray: its memory is shared by design; pack() holds its block
    stack = _stack()
    probe = _FreezeProbe()
    stack.append(probe)
    try:
        data = pickle.dumps(item, PROTOCOL, buffer_callback=probe.buffer_callback)
    except (Exception, SystemExit):  # noqa: BLE001 - pack() tries cloudpickle, and fails the item if it must
        return None
    finally:
        stack.pop()
    return FrozenItem(data) if probe.clean else None


class _FreezeProbe(_Probe):
    """freeze_item()'s pickling pass: small buffers go into the frozen pickle
    (as pack() sends them in-band too); a big one, or a SharedArray, marks the
    item as one for pack() itself (the arena, BufferMemo, held blocks)."""

    __slots__ = ()

    def buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            small = buffer.raw().nbytes < DEFAULT_THRESHOLD
        except BufferError:  # not contiguous: pack() keeps it in-band too
            small = True
        if not small:
            self.clean = False  # this pickle is not kept: the big buffer stays out of it
        return small


def pack(
    obj: Any,
    arena: Optional[_core.Arena] = None,
    threshold: int = DEFAULT_THRESHOLD,
    *,
    what: str = "argument",
    memo: Optional[BufferMemo] = None,
) -> bytes:
    """Pickles ``obj`` (protocol 5; cloudpickle where plain pickle cannot),
    moving every out-of-band buffer of at least ``threshold`` bytes into
    ``arena`` (the process's default arena if None). Returns the payload, which
    owns one reference on each block it lists (see the module's docs).
    ``memo``: a buffer some earlier pack() with the same memo copied is not
    copied again (see BufferMemo); ``arena`` must be the same in every call.

    Raises:
        whatever the pickler raised (PicklingError, TypeError, ...) if ``obj``
        cannot be pickled, with a note naming ``what`` it is;
        MemoryError: if the arena's limit does not leave room for the buffers.
    """
    if type(obj) is list and len(obj) >= _COLUMN_MIN:
        column = _core.encode_numbers(obj)  # a map's chunk or results, often all ints or all floats
        if column is not None:
            return column
    plain = pickle_value(obj)  # plain values (the common ((x,), {}), a result): no probing pass
    if plain is not None:
        return plain
    stack = _stack()
    # Fast path, for the many small payloads: one plain pickling pass that only
    # watches for out-of-band buffers and SharedArrays; if there are none, the
    # result is the plain pickle and no arena is touched.
    probe = _Probe()
    stack.append(probe)
    try:
        pickled = pickle.dumps(obj, PROTOCOL, buffer_callback=probe.buffer_callback)
    except Exception:  # noqa: BLE001 - the full path below tries cloudpickle and explains
        probe.clean = False
    finally:
        stack.pop()
    if probe.clean:
        return pickled
    with _packing(_Packing(arena if arena is not None else default_arena(), threshold, memo)) as state:
        try:
            pickled = pickle.dumps(obj, PROTOCOL, buffer_callback=state.buffer_callback)
        except _ArenaFailure:
            raise
        except Exception:  # noqa: BLE001 - cloudpickle may still manage
            state.discard()
            try:
                pickled = cloudpickle_dumps(obj, state.buffer_callback)
            except _ArenaFailure:
                raise
            except Exception as error:  # noqa: BLE001 - the pickler's own error, explained
                if hasattr(error, "add_note"):
                    error.add_note(f"shoal could not pickle {what} {_describe(obj)} to send it to another process")
                raise
        return state.finish(pickled)


@contextlib.contextmanager
def _packing(state: _Packing) -> Iterator[_Packing]:
    """Runs a pickling pass into ``state``: SharedArrays pickled meanwhile are
    held by it (hold_for_payload), and on any failure its blocks and references
    go; an arena's error comes out as itself (MemoryError, a closed arena)."""
    stack = _stack()
    stack.append(state)
    try:
        yield state
    except _ArenaFailure as failure:
        state.discard()
        raise failure.error from None
    except BaseException:
        state.discard()
        raise
    finally:
        stack.pop()


def _stack() -> List[Union[_Probe, _Packing]]:
    stack: Optional[List[Union[_Probe, _Packing]]] = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def pack_callable(fn: Any, arena: Optional[_core.Arena] = None) -> bytes:
    """``dumps_callable(fn)`` with its big buffers in ``arena``: a callable that
    binds an array (``functools.partial(f, image)``) is copied into shared
    memory once, and each worker maps it instead of unpickling a copy. The
    payload owns references as pack()'s does (a pool's engine keeps them for
    as long as the function is defined)."""
    with _packing(_Packing(arena if arena is not None else default_arena(), DEFAULT_THRESHOLD)) as state:
        return state.finish(dumps_callable(fn, state.buffer_callback))


# --- the payload format ------------------------------------------------------


def _encode(names: Sequence[str], entries: Sequence[Entry], pickled: bytes) -> bytes:
    return _core.encode_packed(list(names), list(entries), pickled)


def _starts_with(payload: Buffer, magic: bytes) -> bool:
    if type(payload) is bytes:  # the common case, without a memoryview
        return payload.startswith(magic)
    return bytes(memoryview(payload)[: len(magic)]) == magic


def is_packed(payload: Buffer) -> bool:
    """Whether ``payload`` lists blocks (else it is a plain pickle or a number column)."""
    return _starts_with(payload, MAGIC)


def is_number_column(payload: Buffer) -> bool:
    """Whether ``payload`` is a list of numbers packed as a column (see
    cpp/include/shoal/wire/number_column.hpp), not a pickle."""
    return _starts_with(payload, NUMBER_COLUMN)


def _decode(payload: Buffer) -> Tuple[List[str], List[Entry], memoryview]:
    names, entries, pickle_offset = _core.decode_packed(payload)
    return names, entries, memoryview(payload).cast("B")[pickle_offset:]


def blocks(payload: Buffer) -> List[Tuple[str, _core.Block]]:
    """The (arena name, Block) pairs a payload holds references on."""
    if not is_packed(payload):
        return []
    names, entries, _ = _decode(payload)
    return [(names[e[0]], e[2]) for e in entries]


# --- unpacking ---------------------------------------------------------------

def unpack(payload: Buffer, arena: Optional[_core.Arena] = None, *, adopt: bool = False) -> Any:
    """Rebuilds the object ``pack()`` pickled into ``payload``, over zero-copy,
    copy-on-write views of its blocks (kept alive by the objects built on
    them): writable where the sender's buffer was, and writes stay in this
    process, in the view written to (each unpack() gets views of its own).

    ``arena``: the arena the payload was packed with (it is attached by name
    if None or another one). ``adopt``: take over the payload's references
    instead of adding new ones (see the module's docs); the payload is spent.
    """
    if not is_packed(payload):
        if is_number_column(payload):
            return _core.decode_numbers(payload)
        return pickle.loads(payload)
    names, entries, pickled = _decode(payload)
    arenas = attach_all(names, arena)
    buffers: List[_core.BlockView] = []
    made = 0  # entries done with: a BUFFER's reference now belongs to its view
    try:
        for arena_index, kind, block, offset, length in entries:
            if kind == BUFFER:
                # Copy-on-write: writable as a pickle's copy, copied only where written.
                view = arenas[arena_index].view(
                    block, adopt=adopt, copy_on_write=True, offset=offset, length=length
                )
                buffers.append(track(view))
            made += 1
        return pickle.loads(pickled, buffers=buffers)
    except BaseException:
        if adopt:  # references no view took over are still the payload's: drop them
            for arena_index, kind, block, _, _ in entries[made + 1 :]:
                if kind == BUFFER:
                    _release_quietly(arenas[arena_index], block)
        raise
    finally:
        if adopt:  # the SharedArrays took their own references while unpickling
            for arena_index, kind, block, _, _ in entries:
                if kind == HELD:
                    _release_quietly(arenas[arena_index], block)


def _release_quietly(arena: _core.Arena, block: _core.Block) -> None:
    """Drops one of a payload's references: disowned by its sender, never
    adopted here. Not release(): that would also take a pin of this process's
    own views of the block (the SharedArray just rebuilt over it), and the last
    pin going unmaps a huge block under the array."""
    try:
        arena.release_disowned(block)
    except Exception:  # noqa: BLE001 - already gone: nothing left to free
        pass


def release(payload: Buffer, arena: Optional[_core.Arena] = None) -> None:
    """Drops the references ``payload`` holds (once; never after adopt=True)."""
    # The payload's references are disowned (not this process's): this
    # process's own mappings and references on the same block (a live
    # SharedArray) stay intact, and a huge block is not mapped to do it.
    _core.release_packed(payload, arena)


