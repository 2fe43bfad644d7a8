"""numpy arrays in shared memory, passed between processes by reference.

``SharedArray(shape, dtype)`` is a ``numpy.ndarray`` whose memory is a block of
a shared-memory arena. However big it is, it pickles to a few dozen bytes that
name the block: the process that unpickles it (a pool worker, a
``multiprocessing`` child started with any start method, any process that can
import shoal) gets a writable array over the same memory, so what a worker
writes into it, the caller sees. Slices and other views of a SharedArray are
SharedArrays and travel the same way. Results of arithmetic are ordinary
arrays (new memory), as are copies.

The memory is reference-counted across processes: it is freed when no process
holds an array over it any more, whichever process lets go last. ``close()``
(or leaving a ``with`` block) lets go of this process's hold at once rather
than at garbage collection; ``share(array)`` copies an existing array in.

Arrays come from the arena given as ``arena=`` (a pool's, typically), else
from a process-wide default arena, created on first use and owned by this
process: its shared memory goes when this process exits (unlinked at exit,
and reclaimed by the next shoal start if the process was killed), so a
SharedArray must be unpickled by its receivers while its creator lives. In a
pool worker the default is the pool's arena instead, owned by the pool's
process: an array a task creates and returns lives on in the caller, and can
be sent to other tasks, after the worker has exited.
Limits: the default arena may use up to half of the available memory when it
is created (half of /dev/shm's free space where it lives there); past its
limit, allocation raises MemoryError.

Sending a SharedArray to another process does not keep it alive by itself:
keep the sender's array until the receiver has unpickled it (a pool's
payloads do keep it alive, see shoal.wire.payload).
"""
from __future__ import annotations

import math
import sys
import weakref
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence, SupportsIndex, Tuple, Union

import numpy as np

from .. import _core
from ..wire.payload import hold_for_payload
from .arena import Arena, BlockDescriptor, attach_view, default_arena, track

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Arena", "SharedArray", "share", "default_arena", "in_shared_memory", "arena_of"]

# --- helpers -----------------------------------------------------------------


def _view_of(obj: object) -> Optional[_core.BlockView]:
    """The BlockView at the root of an array's (or memoryview's) base chain."""
    for _ in range(64):
        if isinstance(obj, _core.BlockView):
            return obj
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return None
    return None


def _bounds(arr: npt.NDArray[Any]) -> Tuple[int, int]:
    """[low, high) addresses of the bytes an array can touch."""
    low = high = arr.__array_interface__["data"][0]
    if arr.size == 0:
        return low, low
    for n, stride in zip(arr.shape, arr.strides):
        if stride >= 0:
            high += (n - 1) * stride
        else:
            low += (n - 1) * stride
    return low, high + arr.itemsize


def arena_of(obj: object) -> Optional[Arena]:
    """The arena whose memory an array (or buffer) is a view of, or None."""
    view = _view_of(obj)
    return view.arena if view is not None else None


def in_shared_memory(obj: npt.ArrayLike, arena: Optional[Arena] = None) -> bool:
    """Whether the memory of ``obj`` (an array or any buffer) lies inside one of
    ``arena``'s segments, as mapped in this process (by default, the arena its
    memory belongs to): that is, whether it was received zero-copy."""
    arr = np.asarray(obj)
    if arena is None:
        arena = arena_of(arr)
        if arena is None:
            return False
    low, high = _bounds(arr)
    return arena.contains(low, max(high - low, 1))


def _shape(shape: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    dims = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    if any(n < 0 for n in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    return dims


def _new(
    cls: type[SharedArray],
    shape: Union[int, Sequence[int]],
    dtype: npt.DTypeLike,
    arena: Optional[Arena],
    order: Literal["C", "F"],
    zero: bool,
) -> SharedArray:
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(
            "a SharedArray cannot hold Python objects (its dtype contains object): only the pointers "
            "would be shared. Use a numeric or fixed-size dtype, or send the array by value."
        )
    dims = _shape(shape)
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    arena = default_arena() if arena is None else arena
    view = track(arena.alloc(math.prod(dims) * dtype.itemsize, zero=zero))
    # numpy's stubs take any buffer (collections.abc.Buffer) only for Python 3.12 on; before, a list of types
    arr: SharedArray = np.ndarray.__new__(cls, dims, dtype, buffer=view, order=order)  # type: ignore[arg-type]
    return arr


def _rebuild(
    descriptor: BlockDescriptor,
    dtype: np.dtype[Any],
    shape: Tuple[int, ...],
    strides: Tuple[int, ...],
    offset: int,
    readonly: bool,
) -> SharedArray:
    """Unpickling: a SharedArray over the block the descriptor names (a new reference)."""
    view = attach_view(descriptor, readonly)
    arr: SharedArray = np.ndarray.__new__(
        SharedArray, shape, dtype, offset=offset, strides=strides,
        buffer=view,  # type: ignore[arg-type]  # a buffer: numpy's stubs before Python 3.12 list types (see _new)
    )
    if readonly:
        arr.flags.writeable = False
    return arr


# --- the array ---------------------------------------------------------------


class SharedArray(np.ndarray):
    """A numpy array in shared memory that pickles by reference.

    Args:
        shape: an int or a tuple of ints.
        dtype: any numpy dtype without Python objects (default float64).
        arena: the shared-memory arena to allocate from (a pool's, or the
            process-wide default).
        order: 'C' (row-major, default) or 'F'.

    The array starts zero-filled. It is an ndarray in every respect; pickling
    it (to any process, any number of times) sends a reference to the same
    memory, writable unless the array is read-only.

    Raises:
        MemoryError: if the arena's limit leaves no room.
        TypeError: for a dtype that holds Python objects.
    """

    # A lazy map passes it as it is (payload.freeze_item): it travels by
    # reference, and a frozen copy would not be the memory it shares.
    _shoal_by_reference = True

    def __new__(
        cls,
        shape: Union[int, Sequence[int]],
        dtype: npt.DTypeLike = np.float64,
        *,
        arena: Optional[Arena] = None,
        order: Literal["C", "F"] = "C",
    ) -> SharedArray:
        return _new(cls, shape, dtype, arena, order, zero=True)

    def __array_finalize__(self, obj: object) -> None:
        # A view of a SharedArray has the array it was made from (the one made
        # over the block) as its base: remember the view there, weakly, so
        # that close() can refuse while views are alive. (A plain list of weak
        # references, pruned as it doubles: cheaper than callbacks.)
        base = self.base
        if isinstance(base, SharedArray):
            attrs = base.__dict__
            views = attrs.get("_views")
            if views is None:
                views = attrs["_views"] = []
            else:
                n = len(views)
                if n >= 64 and n & (n - 1) == 0:
                    views[:] = [r for r in views if r() is not None]
            views.append(weakref.ref(self))

    def __array_wrap__(self, obj: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # A ufunc's new result lives in ordinary memory: hand it back as an ordinary array.
        if return_scalar:
            result = super().__array_wrap__(obj, context, return_scalar)
        else:
            result = super().__array_wrap__(obj, context)
        if isinstance(result, SharedArray) and _view_of(result) is None:
            plain = result.view(np.ndarray)
            return plain[()] if return_scalar else plain
        return result

    def __reduce_ex__(self, protocol: SupportsIndex) -> Union[str, Tuple[Any, ...]]:
        view = _view_of(self)
        if view is None:  # a copy or a computed result: ordinary memory, pickled by value
            return np.asarray(self).__reduce_ex__(protocol)
        if view.closed:
            raise ValueError("cannot pickle a SharedArray after close()")
        hold_for_payload(view)
        offset = self.__array_interface__["data"][0] - view.address
        readonly = not self.flags.writeable
        return _rebuild, (view.descriptor(), self.dtype, self.shape, self.strides, offset, readonly)

    def __reduce__(self) -> Union[str, Tuple[Any, ...]]:
        return self.__reduce_ex__(2)

    @property
    def arena(self) -> Optional[Arena]:
        """The arena the array's memory belongs to (None for a copy in ordinary memory)."""
        return arena_of(self)

    @property
    def closed(self) -> bool:
        view = _view_of(self)
        return view is None or view.closed

    def close(self) -> None:
        """Lets go of this process's hold on the memory now: it is freed if no
        other process holds it. Call it on the array you created or received,
        once no other array in this process is a view of it. Afterwards the
        array is read-only and its contents are undefined (the memory stays
        mapped here until the array is garbage-collected, so reading it is
        harmless). Idempotent.

        Plain ndarray views of it (``np.asarray(a)``, ``a.view(np.ndarray)``)
        are not tracked: do not keep them past close(), or writes through them
        could land in memory since given to another array.

        Raises:
            BufferError: if SharedArray views of it, or arrays and memoryviews
                built on its buffer, are still alive in this process.
        """
        view = _view_of(self)
        if view is None or view.closed:
            return
        base: object = self.base  # (numpy's stubs say a base is an array or None; here it is the view)
        if base is not view:
            raise BufferError("close() the SharedArray that was created or received, not a view of it")
        del base  # not counted below
        # The view is held by self.base, by `view` here and by getrefcount's argument.
        others = sys.getrefcount(view) - 3
        views = self.__dict__.get("_views") or ()
        if others > 0 or view.exports or any(ref() is not None for ref in views):
            raise BufferError(
                "cannot close a SharedArray while other arrays or memoryviews in this process use its "
                "memory (views, slices, np.asarray results): delete them first"
            )
        view.close()
        self.flags.writeable = False

    def __enter__(self) -> "SharedArray":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def share(array: npt.ArrayLike, *, arena: Optional[Arena] = None) -> SharedArray:
    """Copies ``array`` (anything numpy.asarray accepts) into a new SharedArray,
    once; keeps its dtype, shape and memory order."""
    src = np.asarray(array)
    order: Literal["C", "F"] = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
    out = _new(SharedArray, src.shape, src.dtype, arena, order, zero=False)
    np.copyto(out, src, casting="no")
    return out
