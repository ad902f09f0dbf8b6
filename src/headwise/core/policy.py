"""CachePolicy: which KV cache a prompt is answered with, and its budget. Free of torch, so that the CLI can
show defaults and refuse bad settings before a model loads; caches.py builds the caches it names."""

from __future__ import annotations

import math
from dataclasses import dataclass

from headwise.errors import HeadwiseError

SINK = 4  # first tokens every windowed head keeps (attention sinks)
WINDOW = 64  # least recent tokens a non-retrieval head keeps; chosen on dev needles (docs/experiments/kv-cache.md)
CACHES = {  # kind -> what builds it: every head full; the head map's top KV heads full; sink + window everywhere
    "full": "headwise.core.caches:full_cache",
    "headwise": "headwise.core.caches:headwise_cache",
    "window": "headwise.core.caches:window_cache",
}
REDUCES = ("max", "mean")


@dataclass(frozen=True)
class CachePolicy:
    """A KV cache per prompt: `kind` (full, headwise, window), a `budget` as a share of the full cache's
    bytes (headwise, window), `sink` first tokens and at least `window` recent ones for windowed heads, and
    how a KV head's score comes from its query heads' (`reduce`: max or mean)."""

    kind: str = "full"
    budget: float = 0.3
    sink: int = SINK
    window: int = WINDOW
    reduce: str = "max"

    def __post_init__(self) -> None:
        if self.kind not in CACHES:
            raise HeadwiseError(f"unknown cache {self.kind!r}; choose {', '.join(CACHES)}")
        if not 0.0 < self.budget <= 1.0:
            raise HeadwiseError(f"the budget is a share of the full cache in (0, 1], got {self.budget}")
        if self.sink < 0 or self.window < 1:
            raise HeadwiseError(f"need sink >= 0 and window >= 1, got sink={self.sink}, window={self.window}")
        if self.reduce not in REDUCES:
            raise HeadwiseError(f"reduce must be one of {', '.join(REDUCES)}, got {self.reduce!r}")

    @property
    def label(self) -> str:
        """A short name for titles and folder names: "full", "headwise-30%", "window-20%"."""
        return self.kind if self.kind == "full" else f"{self.kind}-{self.budget:.0%}"


def split_budget(budget: float | int, total: int, sink: int, window: int, length: int) -> tuple[int, int]:
    """(KV heads kept full, window of the others) so that `total` KV heads at `length` tokens fit the budget:
    as many heads stay full as fit beside sink + `window` for the rest, and the budget they leave over
    widens the others' window, so no budget goes unused."""
    if isinstance(budget, float) or (isinstance(budget, int) and budget <= 1):
        if not 0.0 < budget <= 1.0:
            raise HeadwiseError(f"a fractional budget must be in (0, 1], got {budget}")
        per_head = budget * length
    else:
        if budget < 1:
            raise HeadwiseError(f"a token budget must be positive, got {budget}")
        per_head = float(budget)
    kept = sink + window
    if kept >= length:
        raise HeadwiseError(
            f"sink + window ({kept} tokens) is not smaller than the context ({length} tokens); "
            "use a smaller window or a longer context"
        )
    if kept > per_head:
        raise HeadwiseError(
            f"sink + window ({kept} tokens) is more than the budget allows per head ({per_head:.0f} tokens "
            f"of {length}); use a smaller window or a larger budget"
        )
    share = (per_head - kept) / (length - kept)  # full heads hold `length`, others `kept`
    n_full = max(0, min(total, math.floor(share * total + 1e-9)))
    if n_full < total:
        spare = per_head * total - n_full * length - (total - n_full) * kept
        window = min(length - sink, window + math.floor(spare / (total - n_full) + 1e-9))
    return n_full, window
