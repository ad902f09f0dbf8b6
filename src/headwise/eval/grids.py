"""Needle-test grids: the settings of a lengths x depths x needles run and the defaults of each command.
Free of torch, so that the CLI can show defaults and refuse a bad grid before a model loads."""

from __future__ import annotations

from dataclasses import dataclass

from headwise.errors import HeadwiseError


def check_grid(lengths: list[int] | tuple[int, ...], depths: list[float] | tuple[float, ...]) -> None:
    """Refuse empty grids, depths outside [0, 1] and contexts too short to hold prose and a needle."""
    if not lengths or not depths:
        raise HeadwiseError("needle tests need at least one length and one depth")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise HeadwiseError(f"depth {d} is outside [0, 1]; depths are fractions of the context (0 = start)")
    for n in lengths:
        if n < 64:
            raise HeadwiseError(f"length {n} is too short; use at least 64 tokens")


@dataclass(frozen=True)
class NeedleGrid:
    """Every (needle, length, depth) of a grid: `needles` of the shipped list (its first ones, or its last
    with `held_out`, which profiling never sees), in `haystack`, each test's prose starting at a sentence
    drawn with `seed`."""

    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    needles: int
    held_out: bool = False
    haystack: str = "frankenstein"
    seed: int = 0

    def __post_init__(self) -> None:
        check_grid(self.lengths, self.depths)
        if self.needles < 1:
            raise HeadwiseError(f"a grid needs at least 1 needle, got {self.needles}")

    @property
    def size(self) -> int:
        """How many tests the grid holds."""
        return len(self.lengths) * len(self.depths) * self.needles


# Defaults of the commands. Profiling reads the first needles; ablation and NIAH the last, never profiled.
PROFILE_GRID = NeedleGrid((500, 1000, 1500), (0.0, 0.25, 0.5, 0.75, 1.0), needles=4)
ABLATE_GRID = NeedleGrid((500, 1000), (0.1, 0.5, 0.9), needles=2, held_out=True)  # high unmasked accuracy
NIAH_GRID = NeedleGrid((500, 1000, 2000, 4000), (0.0, 0.25, 0.5, 0.75, 1.0), needles=2, held_out=True)
