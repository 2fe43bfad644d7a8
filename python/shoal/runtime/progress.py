"""Progress bars for long maps (tqdm, shown only when asked for)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from tqdm import tqdm as Bar  # imported when a bar is asked for, at run time


def progress_bar(enabled: Union[bool, dict[str, Any]], total: Optional[int]) -> Optional[Bar[Any]]:
    """A tqdm bar with items done, rate and ETA; ``enabled`` may be a dict of tqdm options."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    options = dict(enabled) if isinstance(enabled, dict) else {}
    options.setdefault("total", total)
    options.setdefault("unit", "task")
    options.setdefault("smoothing", 0.1)
    return tqdm(**options)
