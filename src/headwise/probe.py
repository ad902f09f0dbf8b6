"""Read and steer attention per head through transformers' attention interface.

headwise registers one attention function, "headwise". Prefill (query length > 1) runs the
fast SDPA path untouched, so no full attention matrix is ever built. Decode steps (query
length 1) compute their single attention row per head in float32: that row is what the
retrieval score reads, and what the uniform-attention mask flattens. Zero-masking removes a
head's output before the output projection on every step. Keys that come from a HeadwiseCache
layer (cache.py) are attended by that layer, which knows its full and windowed heads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from headwise.errors import HeadwiseError
from headwise.models import model_shape

IMPLEMENTATION = "headwise"
SINK_TOKENS = 4


class DecodeRecorder:
    """Per decode step: each head's most-attended absolute position and its attention mass on sink tokens."""

    def __init__(self, num_layers: int, num_heads: int, sink: int = SINK_TOKENS) -> None:
        self.sink = sink
        self.argmax = torch.full((num_layers, num_heads), -1, dtype=torch.long)
        self.sink_mass = torch.zeros(num_layers, num_heads)
        self.seq_len = 0

    def record(self, layer: int, weights: torch.Tensor) -> None:
        """Store batch row 0 of `weights` (batch, heads, kv_len); positions are made absolute."""
        offset = self.seq_len - weights.shape[-1]  # sliding-window caches hold only a recent suffix
        self.argmax[layer] = weights[0].argmax(-1).cpu() + offset
        self.sink_mass[layer] = weights[0, :, : max(self.sink - offset, 0)].sum(-1).cpu()


def full_and_window(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    softcap: float | None,
    sink: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention outputs of the query rows (the last ones of the sequence; batch row 0, causal, no padding)
    over all keys and over the first `sink` and last `window` keys each row sees, both float32 and shaped
    (KV heads, query heads per KV head, rows, head_dim)."""
    heads, kv_heads, kv_len = query.shape[1], key.shape[1], key.shape[2]
    m = query.shape[2]
    q = query[0].float().view(kv_heads, heads // kv_heads, m, -1)
    scores = torch.einsum("kgmd,ktd->kgmt", q, key[0].float()) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    q_pos = torch.arange(kv_len - m, kv_len, device=key.device)[:, None]
    t = torch.arange(kv_len, device=key.device)[None]
    seen = t <= q_pos
    windowed = seen & ((t < sink) | (t > q_pos - window))
    v = value[0].float()
    full = torch.einsum("kgmt,ktd->kgmd", scores.masked_fill(~seen, float("-inf")).softmax(-1), v)
    win = torch.einsum("kgmt,ktd->kgmd", scores.masked_fill(~windowed, float("-inf")).softmax(-1), v)
    return full, win


class WindowProbe:
    """How much each head's output changes when it may only see the first `sink` and last `window` tokens.

    Measured on the last `rows` query rows of each forward pass (the question and answer tokens, the
    ones a compressed cache serves) as ||o_full - o_window|| / ||o_full||, per head, float32. A head
    with a large change needs its distant context; one with none can live in a sink + window cache."""

    def __init__(self, num_layers: int, num_heads: int, sink: int, window: int, rows: int = 32) -> None:
        self.sink, self.window, self.rows = sink, window, rows
        self.total = torch.zeros(num_layers, num_heads)
        self.count = torch.zeros(num_layers, 1)

    def measure(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        softcap: float | None,
    ) -> None:
        """Add this call's change per head for its last rows (batch row 0; causal, no padding)."""
        heads = query.shape[1]
        m = min(self.rows, query.shape[2])
        full, win = full_and_window(query[:, :, -m:], key, value, scaling, softcap, self.sink, self.window)
        change = (full - win).norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-6)  # (kv, group, m)
        self.total[layer] += change.sum(-1).reshape(heads).cpu()
        self.count[layer] += m


class WindowGates(torch.nn.Module):
    """DuoAttention-style gates, one per KV head: the head's output is `a * full + (1 - a) * window`,
    where `window` attends only the first `sink` and the last `window` tokens. Trained (profile.py) so
    that the mix changes the model's answers little while the gates are pushed to 0; a head whose gate
    stays high is one that cannot live in a sink + window cache. Used on query rows at the end of the
    keys (decoding after a cached prompt), batch row 0, no padding; `layers` are the gated layers."""

    def __init__(self, num_layers: int, num_kv_heads: int, sink: int, window: int, layers: list[int]) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.ones(num_layers, num_kv_heads))
        self.sink, self.window, self.layers = sink, window, set(layers)

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        softcap: float | None,
    ) -> torch.Tensor:
        """Gated attention output for this call's query rows, (1, rows, heads, head_dim) in the query's dtype."""
        _, heads, m, dim = query.shape
        # A HeadwiseLayer's decode view: the window it holds plus the step's new token.
        full, win = full_and_window(query, key, value, scaling, softcap, self.sink, self.window + 1)
        a = self.gate[layer].to(key.device)[:, None, None, None]
        out = a * full + (1 - a) * win
        return out.reshape(heads, m, dim).transpose(0, 1)[None].to(query.dtype)


class ProbeDone(Exception):
    """Raised by a SpanProbe after its last needed layer, to end a forward pass whose output is not used."""


class SpanProbe:
    """Attention mass that a block of prompt rows (a query) pays each key span (a document), per head.

    Read in one prefill pass from the rows' own attention scores (rows x keys, float32), so the full
    attention matrix is never built. `mass[layer, head, span]` is the mean over the rows, so queries of
    different lengths (a query and its calibration) compare. With `last_layer`, measuring that layer
    raises ProbeDone, so a caller that only wants the mass skips the layers above it."""

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        rows: tuple[int, int],
        spans: list[tuple[int, int]],
        last_layer: int | None = None,
    ) -> None:
        self.rows, self.spans, self.last_layer = rows, spans, last_layer
        self.mass = torch.zeros(num_layers, num_heads, len(spans))

    def measure(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float,
        softcap: float | None,
    ) -> None:
        """Add this layer's row-to-span attention (batch row 0) when this call computes the rows."""
        start, end = self.rows
        heads, kv_heads, kv_len = query.shape[1], key.shape[1], key.shape[2]
        first = kv_len - query.shape[2]  # position of this call's first query row
        if start < first or end > kv_len:
            return  # this call does not hold the rows
        q = query[0, :, start - first : end - first].float().view(kv_heads, heads // kv_heads, end - start, -1)
        scores = torch.einsum("kgmd,ktd->kgmt", q, key[0].float()) * scaling
        if softcap:
            scores = torch.tanh(scores / softcap) * softcap
        pos = torch.arange(start, end, device=key.device)[:, None]
        causal = torch.arange(kv_len, device=key.device)[None] <= pos
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1).mean(-2).reshape(heads, kv_len)
        edges = torch.nn.functional.pad(weights.cumsum(-1), (1, 0))
        a = torch.tensor([s for s, _ in self.spans], device=key.device)
        b = torch.tensor([e for _, e in self.spans], device=key.device)
        self.mass[layer] = (edges[:, b] - edges[:, a]).cpu()
        if self.last_layer is not None and layer >= self.last_layer:
            raise ProbeDone


@dataclass
class HeadControl:
    """What the attention function should do, per layer: heads to zero, heads to flatten, probes."""

    zero: dict[int, torch.Tensor] = field(default_factory=dict)
    uniform: dict[int, list[int]] = field(default_factory=dict)
    recorder: DecodeRecorder | None = None
    row_probe: WindowProbe | SpanProbe | None = None
    gates: WindowGates | None = None


def _decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    control: HeadControl,
    softcap: float | None,
) -> torch.Tensor:
    """One query row per head in float32, with optional flattening and recording. Returns (B, 1, H, D)."""
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    q = query.float().view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("bkgd,bktd->bkgt", q, key.float()).reshape(batch, heads, kv_len) * scaling
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    valid = None
    if attention_mask is not None:
        row = attention_mask[:, :, -1, -kv_len:]
        if row.dtype == torch.bool:
            valid = row.expand(batch, heads, kv_len)
            scores = scores.masked_fill(~valid, float("-inf"))
        else:
            scores = scores + row.float()
            valid = torch.isfinite(row).expand(batch, heads, kv_len)
    weights = scores.softmax(-1)
    flat = control.uniform.get(module.layer_idx)
    if flat:
        keep = torch.ones(batch, len(flat), kv_len) if valid is None else valid[:, flat].float()
        weights[:, flat] = keep / keep.sum(-1, keepdim=True)
    if control.recorder is not None:
        control.recorder.record(module.layer_idx, weights)
    out = torch.einsum("bkgt,bktd->bkgd", weights.view(batch, kv_heads, -1, kv_len), value.float())
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).to(query.dtype)


def headwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention function registered as "headwise": SDPA, plus per-head reading and masking."""
    control: HeadControl | None = getattr(module, "_headwise", None)
    decode = query.shape[2] == 1
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    split = getattr(key, "_headwise_layer", None)  # keys from a HeadwiseCache layer (cache.py)
    probe = control.row_probe if control is not None else None
    if probe is not None and split is None and not getattr(module, "sliding_window", None):
        probe.measure(module.layer_idx, query, key, value, scale, kwargs.get("softcap"))
    gates = control.gates if control is not None else None
    if split is not None:
        out = split().attend(query, attention_mask, scale)
    elif gates is not None and module.layer_idx in gates.layers:
        out = gates.attend(module.layer_idx, query, key, value, scale, kwargs.get("softcap"))
    elif control is not None and decode and (control.recorder is not None or control.uniform.get(module.layer_idx)):
        if kwargs.get("s_aux") is not None:
            raise HeadwiseError("models with attention sinks (s_aux) are not supported by the headwise probe yet")
        out = _decode_attention(module, query, key, value, attention_mask, scale, control, kwargs.get("softcap"))
    else:
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if control is not None and module.layer_idx in control.zero:
        out = out * control.zero[module.layer_idx].to(out.dtype)[None, None, :, None]
    return out, None


AttentionInterface.register(IMPLEMENTATION, headwise_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def attention_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The self-attention modules, in layer order (they carry `layer_idx` and `scaling`)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "scaling")]
    if len(mods) != model_shape(model).num_layers:
        raise HeadwiseError(
            f"{type(model).__name__}: found {len(mods)} attention modules for "
            f"{model_shape(model).num_layers} layers; this attention layout is not supported"
        )
    return sorted(mods, key=lambda m: m.layer_idx)


def control_of(model: PreTrainedModel) -> HeadControl:
    """Install the headwise attention function on `model` (once) and return its shared control."""
    control = getattr(model, "_headwise_control", None)
    if control is None:
        if getattr(model.config, "use_bidirectional_attention", False):
            raise HeadwiseError("bidirectional attention models are not supported")
        control = HeadControl()
        for module in attention_modules(model):
            module._headwise = control
        model.set_attn_implementation(IMPLEMENTATION)
        model._headwise_control = control
    return control


@contextmanager
def recording(model: PreTrainedModel) -> Iterator[DecodeRecorder]:
    """Record decode-step attention (argmax and sink mass per head) while the block runs."""
    control = control_of(model)
    shape = model_shape(model)
    control.recorder = DecodeRecorder(shape.num_layers, shape.num_heads)
    try:
        yield control.recorder
    finally:
        control.recorder = None


@contextmanager
def window_probing(model: PreTrainedModel, sink: int, window: int, rows: int = 32) -> Iterator[WindowProbe]:
    """Measure each head's output change under a sink + window view while the block runs."""
    control = control_of(model)
    shape = model_shape(model)
    control.row_probe = WindowProbe(shape.num_layers, shape.num_heads, sink, window, rows)
    try:
        yield control.row_probe
    finally:
        control.row_probe = None


@contextmanager
def gating(model: PreTrainedModel, gates: WindowGates) -> Iterator[WindowGates]:
    """Attend through `gates` in their layers while the block runs."""
    control = control_of(model)
    control.gates = gates
    try:
        yield gates
    finally:
        control.gates = None


@contextmanager
def span_probing(
    model: PreTrainedModel, rows: tuple[int, int], spans: list[tuple[int, int]], last_layer: int | None = None
) -> Iterator[SpanProbe]:
    """Measure the attention that prompt rows `rows` pay each key span, per head, while the block runs
    (up to `last_layer`, which ends the forward pass with ProbeDone)."""
    control = control_of(model)
    shape = model_shape(model)
    control.row_probe = SpanProbe(shape.num_layers, shape.num_heads, rows, spans, last_layer)
    try:
        yield control.row_probe
    finally:
        control.row_probe = None
