"""Reading attention from chosen heads: the mass a block of prompt rows (a question) pays each span of keys
(a document, a sentence), per head, in one prefill pass; shared by the reader and the ranker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from headwise.core import attention
from headwise.core.headmap import HeadMap, Top
from headwise.core.hooks import AttentionCall, AttentionHook, StopForward
from headwise.core.models import ModelShape, model_shape
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class SpanProbe(AttentionHook):
    """`mass[layer, head, span]`: the attention that prompt rows [start, end) pay each key span, averaged over
    the rows (so queries of different lengths compare), read from the rows' own float32 logits, batch row 0.
    With `keep`, `weights[layer]` also holds the rows' mean attention on every key (heads, keys). With
    `last_layer`, measuring that layer raises StopForward, ending a pass whose output is not used. The model's
    own sliding-window layers are skipped (their keys are a recent suffix) and score 0."""

    def __init__(
        self, rows: tuple[int, int], spans: list[tuple[int, int]], last_layer: int | None = None, keep: bool = False
    ) -> None:
        self.rows, self.spans, self.last_layer, self.keep = rows, spans, last_layer, keep

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Allocate the mass table."""
        self.mass = torch.zeros(shape.num_layers, shape.num_heads, len(self.spans))
        self.weights: dict[int, torch.Tensor] = {}

    def observe(self, call: AttentionCall) -> None:
        """This layer's row-to-span attention, when this call computes the rows."""
        if call.sliding:
            return
        start, end = self.rows
        first, keys = int(call.positions[0]), call.key.shape[2]
        if start < first or end > keys:
            return  # this call does not hold the rows
        scores = attention.logits(
            call.query[:1, :, start - first : end - first], call.key[:1], call.scaling, call.softcap
        )
        k_pos = torch.arange(keys, device=call.key.device)
        rows = torch.arange(start, end, device=call.key.device)
        weights = attention.masked_softmax(scores, attention.causal(rows, k_pos)).mean(-2).reshape(-1, keys)
        edges = torch.nn.functional.pad(weights.cumsum(-1), (1, 0))
        a = torch.tensor([s for s, _ in self.spans], device=call.key.device)
        b = torch.tensor([e for _, e in self.spans], device=call.key.device)
        self.mass[call.layer] = (edges[:, b] - edges[:, a]).cpu()
        if self.keep:
            self.weights[call.layer] = weights.cpu()
        if self.last_layer is not None and call.layer >= self.last_layer:
            raise StopForward


def head_weights(model: PreTrainedModel, headmap: HeadMap | np.ndarray | None, top: Top = "5%") -> np.ndarray:
    """(layers, heads) weights to read attention through: 1 for the map's `top` heads, a given weight array
    as it is (any choice of heads), or 1 for every head without a map."""
    if isinstance(headmap, np.ndarray):
        shape = model_shape(model)
        if headmap.shape != (shape.num_layers, shape.num_heads):
            raise HeadwiseError(
                f"head weights of shape {headmap.shape} do not fit {shape.num_layers} x {shape.num_heads}"
            )
        return headmap
    if headmap is None:
        shape = model_shape(model)
        return np.ones((shape.num_layers, shape.num_heads))
    headmap.check_model(model)
    return headmap.weights(top)
