"""The arenas this process uses, and their lifetimes here.

An arena (``_core.Arena``) is shared memory for big buffers: the pool's, which
its workers attach, and a process-wide default one for SharedArrays made
outside any pool. This module keeps the process's side of them: which arena a
new SharedArray comes from (``default_arena``), which arenas a pool worker
keeps mapped for its whole life (``pin_arenas``), and what is dropped at exit:
every view this process made on an arena another process owns loses its
reference, then the arenas this process created are closed (their names
unlinked). The exit hook is registered when this module is first imported:
import it before anything whose atexit hook must run first (the pools' shutdown).
"""
from __future__ import annotations

import atexit
import threading
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

from .. import _core

__all__ = ["Arena", "default_arena", "set_worker_arena", "pin_arenas", "attach_all", "track", "attach_view", "close_at_exit"]

#: A shared-memory arena (``_core.Arena``): ``Arena.create(limit=None)``, ``Arena.attach(name)``.
Arena = _core.Arena

#: What a BlockView pickles to (``BlockView.descriptor()``): (arena name, block
#: segment, flags, offset, size, generation, view offset, view length, readonly).
BlockDescriptor = Tuple[str, int, int, int, int, int, int, int, bool]

_default: Optional[Arena] = None
_default_lock = threading.Lock()
# In a pool worker: the pool's arena, which the pool's process owns.
_worker_arena: Optional[Arena] = None


def set_worker_arena(arena: Arena) -> None:
    """Called once by a pool worker: SharedArrays its tasks create come from the
    pool's arena, so they outlive the worker in the caller that receives them."""
    global _worker_arena
    _worker_arena = arena


def default_arena() -> Arena:
    """The process-wide arena SharedArrays come from when no arena is given;
    created (and owned by this process) on first use. In a pool worker it is
    the pool's arena, which the pool's process owns: an array a task creates
    and returns lives on in the caller after the worker exits."""
    global _default
    if _worker_arena is not None:
        return _worker_arena
    arena = _default
    if arena is not None and not arena.closed:
        return arena
    with _default_lock:
        if _default is None or _default.closed:
            _default = _core.Arena.create()
            close_at_exit(_default)
        return _default


# Arenas a pool worker keeps attached for its whole life, by name: without a
# held handle an arena is unmapped when its last view dies, and every task
# would map it again and fault in every page it touches anew.
_pinned: Optional[Dict[str, Arena]] = None


def pin_arenas() -> None:
    """Keep every arena this process attaches mapped until it exits (pool workers)."""
    global _pinned
    if _pinned is None:
        _pinned = {}


def _pin(arena: Arena) -> Arena:
    if _pinned is not None and arena is not None:
        _pinned.setdefault(arena.name, arena)
    return arena


def attach_all(names: Sequence[str], arena: Optional[Arena]) -> List[Arena]:
    return [_pin(arena if arena is not None and arena.name == name else _core.Arena.attach(name)) for name in names]


# Views this process made (weakly): released at exit if their arena is another process's.
_live: "weakref.WeakSet[_core.BlockView]" = weakref.WeakSet()


def track(view: _core.BlockView) -> _core.BlockView:
    """Remembers ``view`` so that its reference is dropped at interpreter exit."""
    _live.add(view)
    return view


def attach_view(descriptor: BlockDescriptor, readonly: Optional[bool] = None) -> _core.BlockView:
    """Unpickling helper for a BlockView: a new reference on the block it names."""
    view = track(_core._attach_block_view(descriptor, readonly))
    _pin(view.arena)
    return view


# --- exit --------------------------------------------------------------------

_arenas_to_close: List[Arena] = []


def close_at_exit(arena: Arena) -> None:
    """Closes ``arena`` (unlinking its names, if this process owns it) at exit,
    after the references of this process's views are dropped."""
    _arenas_to_close.append(arena)


@atexit.register
def at_exit() -> None:
    for view in list(_live):
        try:
            if not view.arena.owns_name:
                view.close(force=True)
        except Exception:  # noqa: BLE001 - exiting: best effort
            pass
    for arena in _arenas_to_close:
        try:
            if arena.owns_name:
                arena.close()
        except Exception:  # noqa: BLE001
            pass
