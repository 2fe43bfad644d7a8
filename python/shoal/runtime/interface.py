"""What the pool core, the result handles and the map feeds need of a
runtime, for type checkers: worker processes through the C++ engine
(engine.Runtime) and the serial debug mode (serial.SerialRuntime) both are one."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from ..obs.snapshot import PoolSnapshot
from .outcome import Handler, Payload

if TYPE_CHECKING:
    from ..wire.payload import BufferMemo
    from .engine import Prepared

#: What a runtime's submit() runs: a callable, or one pickled once for a map's jobs (Runtime.prepare).
Task = Union[Callable[..., Any], "Prepared"]


class PoolRuntime(Protocol):
    @property
    def workers(self) -> int: ...

    @property
    def inline_payload_limit(self) -> int:
        """The largest payload that travels inside a ring frame."""

    #: A map's chunk size when its caller gives none (None: sized from the measured task time).
    default_chunksize: Optional[int]

    def prepare(self, fn: Callable[..., Any]) -> Task: ...

    def forget(self, prepared: Task) -> None:
        """A map that prepare()d ``prepared`` has ended: what only it could
        use (a copy of the buffers bound into its callable) may go."""

    def check_usable(self) -> None:
        """Raises BrokenPoolError if the runtime cannot run tasks."""

    def pack_chunk(self, chunk: list[Any], inband: bool = False, memo: Optional[BufferMemo] = None) -> Payload: ...

    def submit(
        self, fn: Task, tag: int, payload: Payload, handler: Handler, retries: int = 0, timeout: Optional[float] = None
    ) -> int: ...

    def submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handler: Handler,
        retries: int = 0,
        timeout: Optional[float] = None,
    ) -> int: ...

    def cancel(self, job_id: int) -> bool: ...

    def queued(self, job_id: int) -> bool: ...

    def take_job(self, job_id: int, timeout: Optional[float]) -> bool: ...


    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None: ...

    def terminate(self) -> None: ...

    def at_exit(self) -> None: ...

    def worker_pids(self) -> list[int]: ...

    def stats(self) -> PoolSnapshot: ...

    @property
    def dashboard_url(self) -> Optional[str]: ...

    @property
    def metrics_url(self) -> Optional[str]: ...
