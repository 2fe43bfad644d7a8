"""Progress bars for long maps (tqdm, shown only when asked for)."""
from __future__ import annotations

from typing import Any, Optional


def progress_bar(enabled: Any, total: Optional[int]) -> Optional[Any]:
    """A tqdm bar with items done, rate and ETA; ``enabled`` may be a dict of tqdm options."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    options = dict(enabled) if isinstance(enabled, dict) else {}
    options.setdefault("total", total)
    options.setdefault("unit", "task")
    options.setdefault("smoothing", 0.1)
    return tqdm(**options)
