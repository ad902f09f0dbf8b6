"""Causal test of a head map: mask its top heads, then as many random heads, and compare needle accuracy."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.core.headmap import Head, HeadMap, Top
from headwise.core.masks import MODES, mask_heads
from headwise.core.models import check_model_lengths
from headwise.core.needles import NeedleTest
from headwise.errors import HeadwiseError
from headwise.eval.niah import cache_answerer

FORMAT = "headwise.ablation"


@dataclass
class Ablation:
    """One mask mode's accuracies: unmasked (`baseline`), with the map's `count` top heads masked, and with
    `count` random heads masked in each draw. Accuracies are None until measured."""

    count: int
    mode: str
    top_heads: list[Head]
    random_heads: list[list[Head]]
    baseline: float | None = None
    top: float | None = None
    random: list[float] = field(default_factory=list)

    @property
    def random_mean(self) -> float | None:
        """Mean accuracy over the random draws measured so far."""
        return float(np.mean(self.random)) if self.random else None

    @property
    def complete(self) -> bool:
        """Whether every accuracy has been measured."""
        return self.top is not None and len(self.random) == len(self.random_heads)

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "count": self.count,
            "mode": self.mode,
            "baseline": self.baseline,
            "top": self.top,
            "top_heads": [list(h) for h in self.top_heads],
            "random": self.random,
            "random_mean": self.random_mean,
            "random_heads": [[list(h) for h in draw] for draw in self.random_heads],
            "complete": self.complete,
        }


def ablation_document(results: list[Ablation], **about) -> dict:
    """The saved form of an ablation (format headwise.ablation, what `headwise report` reads): `about` (model,
    head map, tests, grid) and each mode's results."""
    return {"format": FORMAT, "version": 1, **about, "results": [r.to_dict() for r in results]}


def random_heads(headmap: HeadMap, count: int, exclude: int, rng: random.Random) -> list[Head]:
    """`count` heads drawn uniformly from those outside the map's top `exclude`."""
    excluded = set(headmap.top(exclude)) if exclude else set()
    pool = [(l, h) for l in range(headmap.num_layers) for h in range(headmap.num_heads) if (l, h) not in excluded]
    if count > len(pool):
        raise HeadwiseError(f"cannot draw {count} random heads from the {len(pool)} outside the top {exclude}")
    return sorted(rng.sample(pool, count))


def ablate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    headmap: HeadMap,
    tests: list[NeedleTest],
    top: Top = "5%",
    draws: int = 5,
    exclude: Top = "10%",
    modes: tuple[str, ...] = MODES,
    seed: int = 0,
    progress: bool = True,
    on_update: Callable[[list[Ablation]], None] | None = None,
) -> list[Ablation]:
    """For each mode, accuracy on `tests` with the map's `top` heads masked and with `draws` random sets of as
    many heads drawn from outside its top `exclude` (seeded, so every mode masks the same random sets).
    `on_update` gets the results after every measurement, so a caller can keep partial results."""
    headmap.check_model(model)
    check_model_lengths(model, [t.length for t in tests])
    if draws < 1:
        raise HeadwiseError(f"need at least 1 random draw, got {draws}")
    for mode in modes:
        if mode not in MODES:
            raise HeadwiseError(f"mask mode must be one of {', '.join(MODES)}, got {mode!r}")
    count = headmap.count(top)
    rng = random.Random(seed)
    drawn = [random_heads(headmap, count, max(headmap.count(exclude), count), rng) for _ in range(draws)]
    results = [Ablation(count, mode, headmap.top(count), drawn) for mode in modes]
    answer = cache_answerer(model, tokenizer)
    bar = tqdm(total=len(tests) * (1 + len(modes) * (1 + draws)), unit="test", disable=not progress)

    def accuracy(desc: str) -> float:
        bar.set_description(desc)
        correct = []
        for test in tests:
            correct.append(answer(test).correct)
            bar.update()
        return float(np.mean(correct))

    def update() -> None:
        if on_update is not None:
            on_update(results)

    with bar:
        baseline = accuracy("no masking")
        for r in results:
            r.baseline = baseline
        update()
        for r in results:
            with mask_heads(model, r.top_heads, r.mode):
                r.top = accuracy(f"{r.mode}: top {count} masked")
            update()
            for i, heads in enumerate(drawn):
                with mask_heads(model, heads, r.mode):
                    r.random.append(accuracy(f"{r.mode}: random draw {i + 1}/{draws}"))
                update()
    return results
