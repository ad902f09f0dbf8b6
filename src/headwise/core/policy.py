"""CachePolicy: which KV cache a prompt is answered with, and its budget. Free of torch, so that the CLI can
show defaults and refuse bad settings before a model loads; caches.py builds the caches it names."""

from __future__ import annotations

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
