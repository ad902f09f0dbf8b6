"""ReaderConfig: the reader's settings, which travel together from the CLI or a caller to `read()`. Free of
torch, so that the CLI can show defaults and refuse bad settings before a model loads."""

from __future__ import annotations

from dataclasses import dataclass

from headwise.errors import HeadwiseError

UNITS = ("sentence", "block", "token")
POOLS = ("sum", "max", "mean")
ORDERS = ("score", "input")
MAX_UNIT_TOKENS = 48  # sentences longer than this are split, so one unit never crowds out the budget
BLOCK_TOKENS = 16


@dataclass(frozen=True)
class ReaderConfig:
    """How `read()` reads: `chunk` new tokens per step, carrying the `keep` tokens' worth of units (sentence,
    16-token block or token) that the `top` heads of the head map attend to most, a unit scoring the `pool`
    (sum, max or mean) of its tokens' attention. The answer comes from the kept passages scoring at least
    `focus` x the best one's (0: every kept passage, for questions that need several facts), at most
    `answer_tokens` long, its numbers, codes and names copied from those passages with `copy`. With
    `skip_boilerplate`, a Project Gutenberg book's header and licence are not read."""

    top: int | float | str = "5%"
    chunk: int = 1024
    keep: int = 256
    unit: str = "sentence"
    pool: str = "sum"  # "mean" keeps several facts more often, but also short fragments that can mislead
    focus: float = 0.5  # chosen on development needles only (docs/experiments/reader.md)
    skip_boilerplate: bool = True
    answer_tokens: int = 32
    copy: bool = True

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise HeadwiseError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.pool not in POOLS:
            raise HeadwiseError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if not 0.0 <= self.focus <= 1.0:
            raise HeadwiseError(f"focus must be between 0 (answer from every kept passage) and 1, got {self.focus}")
        if self.keep < MAX_UNIT_TOKENS or self.chunk < MAX_UNIT_TOKENS:
            raise HeadwiseError(f"chunk and keep must each be at least {MAX_UNIT_TOKENS} tokens")
        if self.answer_tokens < 1:
            raise HeadwiseError(f"answer_tokens must be at least 1, got {self.answer_tokens}")
