"""Causal test of a head map: mask heads and measure needle accuracy (top-k vs random-k)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.errors import HeadwiseError
from headwise.headmap import Head, HeadMap
from headwise.models import model_shape
from headwise.niah import evaluate
from headwise.probe import control_of
from headwise.tasks import NeedleTest

MODES = ("zero", "uniform")
# A grid where the default model is reliable unmasked (the causal test needs a high baseline).
DEFAULT_LENGTHS = [500, 1000]
DEFAULT_DEPTHS = [0.1, 0.5, 0.9]
DEFAULT_NEEDLES = 4


@contextmanager
def mask_heads(model: PreTrainedModel, heads: Iterable[Head], mode: str = "zero") -> Iterator[None]:
    """Mask (layer, head) pairs while the block runs; everything is restored on exit.

    mode "zero": the head's output is zeroed before the output projection, at every position.
    mode "uniform": at decode steps the head attends uniformly to all visible tokens (the
    Retrieval_Head reference code's masking); prefill is untouched.
    """
    if mode not in MODES:
        raise HeadwiseError(f"mask mode must be one of {MODES}, got {mode!r}")
    shape = model_shape(model)
    heads = sorted(set(heads))
    for layer, head in heads:
        if not (0 <= layer < shape.num_layers and 0 <= head < shape.num_heads):
            raise HeadwiseError(
                f"head ({layer}, {head}) is outside this model's {shape.num_layers} x {shape.num_heads} heads"
            )
    control = control_of(model)
    saved_zero, saved_uniform = dict(control.zero), dict(control.uniform)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    for layer, hs in by_layer.items():
        if mode == "zero":
            keep = control.zero.get(layer, torch.ones(shape.num_heads)).clone()
            keep[hs] = 0.0
            control.zero[layer] = keep
        else:
            control.uniform[layer] = sorted(set(control.uniform.get(layer, [])) | set(hs))
    try:
        yield
    finally:
        control.zero, control.uniform = saved_zero, saved_uniform


@dataclass
class Ablation:
    """Accuracy with no masking, with the top-k heads masked, and with k random heads masked per draw."""

    k: int
    mode: str
    baseline: float
    top: float
    top_heads: list[Head]
    random: list[float] = field(default_factory=list)
    random_heads: list[list[Head]] = field(default_factory=list)

    @property
    def random_mean(self) -> float:
        """Mean accuracy over the random draws."""
        return float(np.mean(self.random)) if self.random else float("nan")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {
            "k": self.k,
            "mode": self.mode,
            "baseline": self.baseline,
            "top": self.top,
            "top_heads": [list(h) for h in self.top_heads],
            "random": self.random,
            "random_mean": self.random_mean,
            "random_heads": [[list(h) for h in draw] for draw in self.random_heads],
        }


def random_heads(headmap: HeadMap, k: int, exclude: int, rng: random.Random) -> list[Head]:
    """k heads drawn uniformly from those outside the map's top `exclude`."""
    excluded = set(headmap.top(exclude)) if exclude else set()
    pool = [(l, h) for l in range(headmap.num_layers) for h in range(headmap.num_heads) if (l, h) not in excluded]
    if k > len(pool):
        raise HeadwiseError(f"cannot draw {k} random heads from the {len(pool)} outside the top {exclude}")
    return sorted(rng.sample(pool, k))


def accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], desc: str) -> float:
    """Share of tests answered correctly."""
    return float(np.mean([o.correct for o in evaluate(model, tokenizer, tests, desc=desc)]))


def ablate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    headmap: HeadMap,
    tests: list[NeedleTest],
    k: int | float | str = "5%",
    draws: int = 5,
    exclude: int | float | str = "10%",
    modes: tuple[str, ...] = MODES,
    seed: int = 0,
    baseline: float | None = None,
) -> list[Ablation]:
    """For each mode: accuracy with the top-k heads masked and with `draws` random k-sets drawn from
    outside the top `exclude` heads (fixed seed, so every mode masks the same random sets)."""
    headmap.check_model(model)
    count = headmap.resolve_k(k)
    outside = headmap.resolve_k(exclude)
    rng = random.Random(seed)
    draws_heads = [random_heads(headmap, count, max(outside, count), rng) for _ in range(draws)]
    if baseline is None:
        baseline = accuracy(model, tokenizer, tests, "no masking")
    top = headmap.top(count)
    results = []
    for mode in modes:
        with mask_heads(model, top, mode):
            top_acc = accuracy(model, tokenizer, tests, f"top-{count} {mode}")
        rand = []
        for i, heads in enumerate(draws_heads):
            with mask_heads(model, heads, mode):
                rand.append(accuracy(model, tokenizer, tests, f"random-{count} #{i + 1} {mode}"))
        results.append(Ablation(count, mode, baseline, top_acc, top, rand, draws_heads))
    return results
