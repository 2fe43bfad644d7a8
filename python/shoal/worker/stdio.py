"""A worker's stdout and stderr: whole lines to the descriptors it shares with
the caller and the other workers."""
from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from typing_extensions import Buffer


class _WholeLines(io.RawIOBase):
    """Bytes to a file descriptor shared with other processes, a whole line per
    write(2), so lines from different workers never tear into each other.

    Pending bytes are searched for a newline only where they are new, and a
    line longer than ``LIMIT`` is written in pieces: output costs time linear
    in its size. A descriptor that is closed or whose reader is gone drops the
    output rather than failing the task (the caller's stdout may be closed).
    """

    LIMIT = 1 << 16

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pending = bytearray()

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return os.isatty(self._fd)
        except OSError:
            return False

    def write(self, data: Buffer) -> int:
        data = bytes(data)
        before = len(self._pending)
        self._pending += data
        newline = data.rfind(b"\n")
        if newline >= 0:
            cut = before + newline + 1
            self._emit(self._pending[:cut])
            del self._pending[:cut]
        if len(self._pending) >= self.LIMIT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending.clear()

    def _emit(self, data: Buffer) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:  # closed, or nobody reads any more: the output is dropped
            pass


def text_stream(fd: int) -> TextIO:
    """A full text stream (``.buffer``, ``fileno()``, ``encoding``) on ``fd``."""
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    stream = io.TextIOWrapper(
        _WholeLines(fd),  # type: ignore[type-var]  # typeshed wants a buffer with a `name` (only repr() reads one)
        encoding=encoding,
        errors="backslashreplace",
        write_through=True,
    )
    return stream


