"""What the servers of shoal.obs (the dashboard, /metrics) share: a socket
server run in a daemon thread for as long as the caller holds it, stopped
(its port freed) by ``close()`` or a ``with`` block; one-line messages for
an address that cannot be bound.
"""
from __future__ import annotations

import errno
import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Optional, TypeVar

if TYPE_CHECKING:
    import socketserver

_log = logging.getLogger("shoal")
_Self = TypeVar("_Self", bound="BackgroundServer")


def listen_error(exc: OSError, host: str, port: int) -> OSError:
    """The one-line error for an address that cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return OSError(exc.errno, f"port {port} on {host} is in use (another program listens there): "
                                  "pass port=0 for a free one, or choose another port")
    return OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}")


class BackgroundServer:
    """A server running in a daemon thread; ``.url`` says where (``path`` on
    ``host``:``.port``). Its errors are logged, never raised into the
    user's program."""

    def __init__(self, server: socketserver.BaseServer, host: str, path: str, name: str) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._closed = False
        self._name = name
        self.host = host
        self.port: int = server.server_address[1]  # type: ignore[index,assignment]  # an (host, port) address
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}{path}"
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.2)
        except Exception:  # never out of the thread: the user's program goes on
            _log.warning("%s: the server stopped after an error", self._name, exc_info=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def _stopping(self) -> None:
        """Called once by close() before the server stops (ends long-lived responses)."""

    def close(self) -> None:
        """Stops the server, waits for its thread and frees the port. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' closed' if self._closed else ''}>"
