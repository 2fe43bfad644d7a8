"""What the pool core, the result handles and the map feeds need of a
runtime, for type checkers: worker processes through the C++ engine
(engine.Runtime) and the serial debug mode (serial.SerialRuntime) both are one."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol, Union

from .outcome import Handler, Payload

if TYPE_CHECKING:
    from .engine import Prepared
    from .map_feed import MapFeed

#: What a runtime's submit() runs: a callable, or one pickled once for a map's jobs (Runtime.prepare).
Task = Union[Callable[..., Any], "Prepared"]


class PoolRuntime(Protocol):
    @property
    def workers(self) -> int: ...

    @property
    def inline_payload_limit(self) -> int:
        """The largest payload that travels inside a ring frame."""

    def prepare(self, fn: Callable[..., Any]) -> Task: ...

    def check_usable(self) -> None:
        """Raises BrokenPoolError if the runtime cannot run tasks."""

    def pack_chunk(self, chunk: list[Any], inband: bool = False) -> Payload: ...

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

    def wait_for_job(self, job_id: int, timeout: Optional[float]) -> Optional[float]: ...

    def take_job(self, job_id: int, timeout: Optional[float]) -> bool: ...

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        star: bool,
        chunksize: Optional[int] = None,
        ordered: bool = True,
        retries: int = 0,
        total: Optional[int] = None,
        bounded: bool = True,
        timeout: Optional[float] = None,
        on_chunk: Optional[Callable[[int], object]] = None,
        on_complete: Optional[Callable[[MapFeed], None]] = None,
        gather: bool = False,
    ) -> MapFeed: ...

    def shutdown(self, wait: bool = True, cancel_pending: bool = False) -> None: ...

    def terminate(self) -> None: ...

    def at_exit(self) -> None: ...

    def worker_pids(self) -> list[int]: ...

    def stats(self) -> dict[str, int]: ...
