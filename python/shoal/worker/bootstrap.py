"""Entry point of shoal's child processes (the fork server and spawned workers).

Started as ``python -c <code> <sys.path json> <mode> <segment> <owner pid>
<config json> [slot]`` so that the child imports modules exactly as the parent
does (same sys.path), without depending on the current directory.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import threading
from typing import Any, Callable, Optional, Tuple

from . import cores

_CODE = "import sys,json;sys.path[:0]=json.loads(sys.argv[1]);from shoal.worker.bootstrap import main;main(sys.argv[2:])"


def main_preparation() -> dict[str, Any]:
    """What a fresh interpreter needs to become a worker of this process, as
    multiprocessing's spawn gives its children: the main module (the user's
    script, or ``-m`` module, imported as ``__mp_main__``), ``sys.argv``, the
    working directory and the process's authkey."""
    from multiprocessing import spawn

    data = spawn.get_preparation_data("shoal-worker")
    wanted = ("sys_argv", "orig_dir", "dir", "init_main_from_name", "init_main_from_path")
    prepared = {key: data[key] for key in wanted if key in data}
    prepared["authkey"] = bytes(data["authkey"]).hex()
    return prepared


def prepare_main(prepared: dict[str, Any]) -> None:
    """Runs in a fresh interpreter: what multiprocessing.spawn.prepare does."""
    import multiprocessing
    from multiprocessing import process, spawn

    data = dict(prepared)
    data["authkey"] = process.AuthenticationString(  # type: ignore[attr-defined]  # missing from typeshed
        bytes.fromhex(data["authkey"])
    )
    current = multiprocessing.current_process()
    current._inheriting = True  # type: ignore[attr-defined] # a pool started while importing main is an error
    try:
        spawn.prepare(data)
    finally:
        current._inheriting = False  # type: ignore[attr-defined]


def importing_main() -> bool:
    """Whether this interpreter is importing the user's main module to become a
    worker: starting a pool then would start workers without end."""
    import multiprocessing

    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


def child_argv(mode: str, config: dict[str, Any]) -> list[str]:
    """The argv the engine starts (it fills in the segment; spawn mode appends the slot)."""
    import subprocess

    paths = [p if p else os.getcwd() for p in sys.path]
    config = dict(config, main=main_preparation())
    return [
        sys.executable,
        *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined] # -W, -X, -O as the parent
        "-c",
        _CODE,
        json.dumps(paths),
        mode,
        "{segment}",
        str(os.getpid()),
        json.dumps(config),
    ]


def _no_other_python_threads() -> bool:
    # Only Python threads can hold the locks the child's Python code would need
    # (the import lock, logging's, a user's). Native pools such as OpenBLAS's
    # idle threads register their own fork handlers: the same assumption that
    # multiprocessing's default "fork" start method makes.
    return threading.active_count() == 1


# --- the initializer, inherited as multiprocessing's fork children inherit it ------

#: A pool's initializer and its arguments.
Init = Tuple[Callable[..., object], Tuple[Any, ...]]

# (initializer, initargs) by token, in a fork server's memory: what its workers
# run. The parent drops its entry once the server is forked.
_inherited_init: dict[int, Init] = {}


def run_inherited_initializer(token: int) -> None:
    """The initializer a forked worker finds in the memory it inherited."""
    try:
        initializer, initargs = _inherited_init[token]
    except KeyError:
        raise RuntimeError(
            "the pool's initializer and its arguments were inherited from the caller's memory, "
            "and this worker's fork server was restarted as a fresh interpreter that has none"
        ) from None
    initializer(*initargs)


class _FdRecorder:
    """A stand-in for multiprocessing's spawning Popen while the initializer's
    arguments are walked: notes the descriptors they carry (an mp.Queue's
    pipe), which the fork server then keeps for its workers."""

    def __init__(self) -> None:
        self.fds: set[int] = set()

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.add(fd)
        return fd

    def DupFd(self, fd: int) -> int:  # noqa: N802 - multiprocessing's name
        return fd


def descriptors_of(obj: Any) -> set[int]:
    """The file descriptors multiprocessing objects in ``obj`` would pass to a child."""
    import io
    from multiprocessing import context, synchronize
    from multiprocessing.reduction import ForkingPickler

    class Walker(ForkingPickler):  # multiprocessing's own reducers (a Connection's DupFd)
        def persistent_id(self, item: Any) -> Any:  # semaphores travel by memory, not by fd
            return 0 if isinstance(item, synchronize.SemLock) else None

    recorder = _FdRecorder()
    context.set_spawning_popen(recorder)  # type: ignore[arg-type]  # a stand-in: only its two methods are called
    try:
        Walker(io.BytesIO(), 5).dump(obj)
    except Exception:  # noqa: BLE001 - only the descriptors are wanted; unpicklable is fine here
        pass
    finally:
        context.set_spawning_popen(None)
    return recorder.fds


class InheritedFd:
    """An initializer argument's descriptor in a fresh worker: the number the
    engine keeps open in every worker it starts (multiprocessing's _DupFd)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        return self.fd


class _FdPasser:
    """multiprocessing's spawning Popen, for pickling what fresh worker
    interpreters receive: each descriptor an object hands over (an mp.Queue's
    pipe, a Connection) is duplicated here, above the standard ones, and the
    duplicate is what every worker the engine starts keeps at that number."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        import fcntl

        copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)  # close-on-exec here: only our workers get it
        self.fds.append(copy)
        return copy

    def DupFd(self, fd: int) -> InheritedFd:  # noqa: N802 - multiprocessing's name
        return InheritedFd(fd)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def pickle_for_fresh_workers(obj: Any) -> tuple[bytes, list[int]]:
    """Pickles ``obj`` (the initializer and its arguments) for workers that
    start as fresh interpreters, as multiprocessing pickles a spawned child's
    arguments: its reducers run, so an mp.Queue, a Connection, or a Manager
    proxy travel as they do to a spawn child. Returns the pickle and the
    descriptors the workers must inherit (the caller's to close when the pool
    is gone). Objects that only travel by inheritance raise RuntimeError, as
    with the stdlib."""
    import io
    from multiprocessing import context
    from multiprocessing.reduction import ForkingPickler

    passer = _FdPasser()
    context.set_spawning_popen(passer)  # type: ignore[arg-type]  # a stand-in: only its two methods are called
    try:
        buffer = io.BytesIO()
        ForkingPickler(buffer, 5).dump(obj)
        return buffer.getvalue(), passer.fds
    except BaseException:
        passer.close()
        raise
    finally:
        context.set_spawning_popen(None)


def _release_inherited_fds(keep: set[int]) -> None:
    """Points every descriptor the caller had (pipes, sockets, locked files)
    at /dev/null, except stdout, stderr and ``keep``: a worker must not hold a
    subprocess's stdin open, accept on a closed listener, or keep an flock.
    The numbers stay taken, so a Python object in the copied heap that still
    names one (and may close it) never closes a descriptor of ours."""
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (1, 2, null) or fd in keep:
            continue
        try:
            os.dup2(null, fd, inheritable=fd == 0)
        except OSError:  # the listing's own descriptor, already closed
            pass
    os.close(null)


def fork_fork_server(
    config: dict[str, Any], inherit_fds: bool = False, init: Optional[Init] = None, init_token: int = 0
) -> Optional[tuple[int, int]]:
    """Forks this process into a fork server, if that is safe; returns (pid, socket fd).

    Forking is safe while no other Python thread runs (see
    _no_other_python_threads). Then the server starts in a millisecond and its
    workers inherit every module already imported. Otherwise (None) the engine
    starts a clean interpreter instead, except for ``inherit_fds``, which
    forks whatever threads run, with the same risk multiprocessing's "fork"
    takes (a lock another thread held stays held in the child).
    ``inherit_fds`` (start_method="fork"):
    workers keep the caller's file descriptors, as multiprocessing's fork
    children do; else the server is a clean helper holding none of them but
    those the initializer's arguments carry. ``init``: (initializer, initargs),
    which the workers then inherit unpickled, under ``init_token``.
    """
    if not inherit_fds and not _no_other_python_threads():
        return None  # "fork" forks regardless, as multiprocessing's fork start method does
    from .. import _core
    from . import loop

    keep = descriptors_of(init) if init is not None and not inherit_fds else set()
    if init is not None:
        _inherited_init[init_token] = init

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
    finally:
        if init is not None and pid != 0:
            del _inherited_init[init_token]  # the server has its copy; the caller keeps no reference
    if pid == 0:  # the fork server
        try:
            ours.close()
            sock = _above_stdio(theirs.detach())
            if inherit_fds:
                _stdin_from_devnull()
            else:
                _release_inherited_fds(keep | {sock})
            cores.prepare(config)  # numpy may be loaded already: its threads are limited here
            slot, segment = _core.serve_forks(sock)  # the worker's copy is closed in C++
            loop.main(segment, slot, config)  # never returns
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    theirs.close()
    return pid, ours.detach()


def _above_stdio(fd: int) -> int:
    """Moves ``fd`` above 2 and points closed standard descriptors at /dev/null:
    a caller that closed its stdout must not have workers print into our socket."""
    import fcntl

    if fd < 3:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        fd = moved
    for std in (0, 1, 2):
        try:
            os.fstat(std)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != std:
                os.dup2(null, std)
                os.close(null)
    return fd


def _stdin_from_devnull() -> None:
    # As multiprocessing's children: a worker reads no input of the caller's.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _preload(config: dict[str, Any]) -> None:
    for name in config.get("preload", ()):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - preloading is an optimisation only
            pass


def main(args: list[str]) -> None:
    from .. import _core
    from . import loop

    mode, segment, owner_pid, config_json, *rest = args
    config = json.loads(config_json)
    cores.prepare(config)  # before the main module can import numpy
    try:
        prepare_main(config["main"])
    except BaseException as exc:  # noqa: BLE001 - each worker reports it: the pool breaks with this text
        import traceback

        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        config["startup_error"] = f"a worker could not import the main module ({sys.argv[0]!r}):\n{text}"
    if mode == "forkserver":
        _preload(config)
        slot, segment = _core.serve_forks(3)  # returns in each forked worker
        loop.main(segment, slot, config)
    else:
        _core.die_with_parent(int(owner_pid))
        loop.main(segment, int(rest[0]), config)
