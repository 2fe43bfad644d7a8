"""Argument checks shared by both pool surfaces, with the stdlib's errors."""
from __future__ import annotations

import os
from typing import Any, Optional, Union


def default_workers() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parse_bytes(amount: Union[int, str, None]) -> int:
    """Bytes from an int or a string such as "512MB", "2 GiB"; 0 for None."""
    if amount is None:
        return 0
    if isinstance(amount, int):
        if amount < 0:
            raise ValueError("a memory limit cannot be negative")
        return amount
    text = amount.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(f"cannot read {amount!r} as a size in bytes (try 512_000_000 or '512MB')") from None


def check_timeout(timeout: Optional[float]) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"a task's timeout must be a number of seconds, not {timeout!r}")
    if timeout <= 0:
        raise ValueError(f"a task's timeout must be positive, not {timeout!r}")
    return float(timeout)


START_METHODS = ("forkserver", "fork", "spawn", "inline")


def check_start_method(start_method: str, context: Any) -> str:
    """The start method from ``start_method`` or a multiprocessing context
    (``mp_context=``/``context=`` as the stdlib pools take)."""
    if context is not None:
        get = getattr(context, "get_start_method", None)
        if get is None:
            raise TypeError(f"expected a multiprocessing context, not {context!r}")
        start_method = get()
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {', '.join(map(repr, START_METHODS))}, not {start_method!r}")
    return start_method


def check_chunksize(chunksize: Any, message: str) -> None:
    """``None`` (sized from the measured task time) or an int of at least 1."""
    if chunksize is None:
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an integer, not {chunksize!r}")
    if chunksize < 1:
        raise ValueError(message)


