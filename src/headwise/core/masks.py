"""Masking heads: remove their output, or flatten their attention at decode steps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from headwise.core.hooks import AttentionCall, AttentionHook, attach
from headwise.core.models import ModelShape
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Head = tuple[int, int]  # (layer, query head)
MODES = ("zero", "uniform")


def _by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    """Query heads grouped by layer, sorted."""
    grouped: dict[int, list[int]] = {}
    for layer, head in sorted(set(heads)):
        grouped.setdefault(layer, []).append(head)
    return grouped


class ZeroHeads(AttentionHook):
    """Removes the heads' output before the output projection, at every position."""

    def __init__(self, heads: Iterable[Head]) -> None:
        self.heads = _by_layer(heads)
        self.hooked_layers = frozenset(self.heads)
        self.keep: dict[int, torch.Tensor] = {}

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Check the heads exist and build each layer's 0/1 factor per head."""
        _check(self.heads, shape)
        for layer, heads in self.heads.items():
            keep = torch.ones(shape.num_heads)
            keep[heads] = 0.0
            self.keep[layer] = keep

    def output(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        """The output with the masked heads zeroed."""
        return out * self.keep[call.layer].to(out.device, out.dtype)[None, None, :, None]


class UniformHeads(AttentionHook):
    """At decode steps the heads attend uniformly to every key they may see (the Retrieval_Head reference
    code's masking); prefill is untouched."""

    def __init__(self, heads: Iterable[Head]) -> None:
        self.heads = _by_layer(heads)
        self.hooked_layers = frozenset(self.heads)

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Check the heads exist."""
        _check(self.heads, shape)

    def weights(self, call: AttentionCall, weights: torch.Tensor) -> torch.Tensor:
        """The weights with the masked heads' rows flat over the visible keys."""
        heads = self.heads[call.layer]
        visible = call.visible().float().expand(weights.shape[0], len(heads), -1)
        weights[:, heads] = visible / visible.sum(-1, keepdim=True)
        return weights


def _check(heads: dict[int, list[int]], shape: ModelShape) -> None:
    """Refuse heads outside the model's layers x heads."""
    for layer, hs in heads.items():
        for head in hs:
            if not (0 <= layer < shape.num_layers and 0 <= head < shape.num_heads):
                raise HeadwiseError(
                    f"head ({layer}, {head}) is outside this model's {shape.num_layers} x {shape.num_heads} heads"
                )


@contextmanager
def mask_heads(model: PreTrainedModel, heads: Iterable[Head], mode: str = "zero") -> Iterator[PreTrainedModel]:
    """Mask (layer, head) pairs while the block runs; the model is restored on exit. `mode` "zero" removes
    the heads' output at every position; "uniform" flattens their attention at decode steps."""
    if mode not in MODES:
        raise HeadwiseError(f"mask mode must be one of {', '.join(MODES)}, got {mode!r}")
    hook = ZeroHeads(heads) if mode == "zero" else UniformHeads(heads)
    with attach(model, hook):
        yield model
