"""A head-wise KV cache: full history for retrieval KV heads, sink + recent window for the rest.

Storage is split per layer into a "full" tensor (retrieval KV heads, every token) and a "window"
tensor (other KV heads, at most `sink + window` tokens), so the bytes held scale with the budget;
nothing is masked and kept. The headwise attention function (probe.py) recognises the keys this
cache returns and attends each part with its own keys. A window head attends to what it holds plus
the step's new tokens: the whole prompt in a one-shot prefill (computed anyway, dropped after the
layer, as RazorAttention compresses after prefill), sink + window + the chunk in chunked prefill.
Attending with the sink + window pattern inside the prefill too (DuoAttention's streaming heads, this
module up to commit 9c410f3) was measured worse on dev needles: 5/18 against 12/18 for
`bench/kv_window.py --budgets 0.3 --windows 176`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from headwise.errors import HeadwiseError
from headwise.headmap import HeadMap
from headwise.models import model_id, model_shape, sliding_layers
from headwise.probe import control_of
from headwise.tasks import NeedleTest

WINDOW = 64  # recent tokens of non-retrieval heads, chosen among 16/32/64/176 on dev needles (bench/kv_window.py)


class HeadwiseLayer(CacheLayerMixin):
    """One layer: `full` KV heads keep every token, `win` KV heads keep the first `sink` and last `window`."""

    is_sliding = False
    is_croppable = False

    def __init__(self, full: list[int], num_kv_heads: int, sink: int, window: int) -> None:
        super().__init__()
        self.full = torch.tensor(sorted(full), dtype=torch.long)
        self.win = torch.tensor(sorted(set(range(num_kv_heads)) - set(full)), dtype=torch.long)
        self.sink, self.window = sink, window
        self.seen = 0
        self.win_keys = self.win_values = self.win_pos = None
        # What the last update handed to attention: the window heads' visible keys for this step.
        self.step: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate empty tensors on the states' device and dtype."""
        b, _, _, d = key_states.shape
        empty = key_states.new_zeros

        self.keys, self.values = empty(b, len(self.full), 0, d), empty(b, len(self.full), 0, d)
        self.win_keys, self.win_values = empty(b, len(self.win), 0, d), empty(b, len(self.win), 0, d)
        self.win_pos = torch.zeros(0, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new tokens; window heads see old window + new tokens now, then drop what falls out."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        new_pos = torch.arange(self.seen, self.seen + q, device=key_states.device)
        self.seen += q
        self.keys = torch.cat([self.keys, key_states[:, self.full]], dim=2)
        self.values = torch.cat([self.values, value_states[:, self.full]], dim=2)
        wk = torch.cat([self.win_keys, key_states[:, self.win]], dim=2)
        wv = torch.cat([self.win_values, value_states[:, self.win]], dim=2)
        pos = torch.cat([self.win_pos, new_pos])
        self.step = (wk, wv, pos)
        self.keys._headwise_layer = weakref.ref(self)  # lets the attention function find this layer
        keep = (pos < self.sink) | (pos >= self.seen - self.window)
        self.win_keys, self.win_values, self.win_pos = wk[:, :, keep], wv[:, :, keep], pos[keep]
        return self.keys, self.values

    def attend(self, query: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
        """Attention for this layer's last update: full KV heads over everything, window KV heads over what
        they hold plus the new tokens. Returns (batch, q_len, heads, head_dim) like other attention functions."""
        win_k, win_v, win_pos = self.step
        batch, heads, q_len, dim = query.shape
        group = heads // (len(self.full) + len(self.win))
        out = query.new_empty(batch, heads, q_len, dim)
        q_heads = torch.arange(heads, device=query.device).view(-1, group)  # query heads of each KV head
        causal = attention_mask is None and q_len > 1
        if len(self.full):
            qi = q_heads[self.full].flatten()
            out[:, qi] = F.scaled_dot_product_attention(
                query[:, qi],
                self.keys,
                self.values,
                attn_mask=attention_mask,
                is_causal=causal,
                scale=scaling,
                enable_gqa=True,
            )
        if len(self.win):
            qi = q_heads[self.win].flatten()
            q_pos = torch.arange(self.seen - q_len, self.seen, device=query.device)
            mask = (win_pos[None] <= q_pos[:, None])[None, None]  # causal over what is held plus the new tokens
            if attention_mask is not None:  # padding: the model's mask over the sequence, at the kept positions
                pad = attention_mask[..., win_pos]
                mask = mask & (pad if pad.dtype == torch.bool else pad == 0)
            out[:, qi] = F.scaled_dot_product_attention(
                query[:, qi], win_k, win_v, attn_mask=mask, scale=scaling, enable_gqa=True
            )
        return out.transpose(1, 2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The model's mask covers the full sequence (the full heads' view); window heads gather from it."""
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        """Tokens seen so far."""
        return self.seen

    def get_max_length(self) -> int:
        """No maximum: full heads grow with the sequence."""
        return -1

    def reset(self) -> None:
        """Forget everything (a fresh cache for the next prompt)."""
        self.keys = self.values = self.win_keys = self.win_values = self.win_pos = self.step = None
        self.seen = 0
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search support: reorder the batch of both parts."""
        super().reorder_cache(beam_idx)
        self.win_keys = self.win_keys.index_select(0, beam_idx)
        self.win_values = self.win_values.index_select(0, beam_idx)

    def nbytes(self) -> int:
        """Bytes held by this layer's stored keys and values."""
        if not self.is_initialized:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.win_keys, self.win_values))


class HeadwiseCache(Cache):
    """KV cache for `model.generate(past_key_values=...)` that keeps full history only for chosen KV heads."""

    def __init__(self, layers: list[CacheLayerMixin], full: list[list[int]], sink: int, window: int) -> None:
        super().__init__(layers=layers)
        self.full_heads = full
        self.sink, self.window = sink, window

    @classmethod
    def from_headmap(
        cls,
        model: PreTrainedModel,
        headmap: HeadMap,
        budget: float | int | None = None,
        retrieval_fraction: float | None = None,
        sink: int = 4,
        window: int = WINDOW,
        context_length: int | None = None,
        reduce: str = "max",
    ) -> HeadwiseCache:
        """Keep the KV heads the map ranks highest (by their query heads' `reduce` score) in full.

        Give either `retrieval_fraction` (share of KV heads kept full) or `budget`: a fraction of
        the full cache's bytes at `context_length` tokens, or a token count per KV head on average.
        With a budget, `window` is the least the other heads keep: what the full heads leave widens it.
        Both count only the layers with global attention: a model's sliding-window layers keep their own cache."""
        headmap.check_model(model)
        shape = model_shape(model)
        if sink < 0 or window < 1:
            raise HeadwiseError(f"need sink >= 0 and window >= 1, got sink={sink}, window={window}")
        sliding = sliding_layers(model)  # already windowed by the model: not headwise's to choose
        total = (shape.num_layers - len(sliding)) * shape.num_kv_heads
        if (budget is None) == (retrieval_fraction is None):
            raise HeadwiseError("give exactly one of budget= or retrieval_fraction=")
        if retrieval_fraction is not None:
            if not 0.0 <= retrieval_fraction <= 1.0:
                raise HeadwiseError(f"retrieval_fraction must be in [0, 1], got {retrieval_fraction}")
            n_full = round(retrieval_fraction * total)
        else:
            n_full, window = split_budget(budget, total, sink, window, context_length or shape.max_positions)
        kv = headmap.kv_scores(reduce)
        kv[list(sliding)] = -np.inf
        order = np.argsort(-kv, axis=None, kind="stable")[:n_full]
        full: list[list[int]] = [[] for _ in range(shape.num_layers)]
        for i in order:
            full[int(i // shape.num_kv_heads)].append(int(i % shape.num_kv_heads))
        return cls.for_heads(model, full, sink, window)

    @classmethod
    def for_heads(cls, model: PreTrainedModel, full: list[list[int]], sink: int, window: int) -> HeadwiseCache:
        """An empty cache keeping in full the KV heads listed per layer and sink + window for the others; a
        model's sliding-window layers keep their own cache layer (and count as full)."""
        shape, sliding = model_shape(model), sliding_layers(model)
        full = [list(range(shape.num_kv_heads)) if layer in sliding else heads for layer, heads in enumerate(full)]
        layers: list[CacheLayerMixin] = []
        for layer, heads in enumerate(full):
            if layer in sliding:  # already windowed by the model: keep its own cache layer
                layers.append(DynamicSlidingWindowLayer(sliding_window=sliding[layer]))
            elif len(heads) == shape.num_kv_heads:
                layers.append(DynamicLayer())
            else:
                layers.append(HeadwiseLayer(heads, shape.num_kv_heads, sink, window))
        control_of(model)  # make sure the model attends through the function that understands this cache
        return cls(layers, full, sink, window)

    def nbytes(self) -> int:
        """Bytes of keys and values held now."""
        return kv_nbytes(self)[0]

    def full_nbytes(self) -> int:
        """Bytes a plain full cache would hold for the same tokens."""
        return kv_nbytes(self)[1]


def kv_nbytes(cache: Cache) -> tuple[int, int]:
    """(bytes held, bytes a full cache would hold) for any transformers cache made of KV layers.

    A model's own sliding-window layers count as full: they hold what the model itself needs."""
    held = full = 0
    for layer in cache.layers:
        if not layer.is_initialized or layer.keys is None:
            continue
        size = layer.keys.element_size()
        if isinstance(layer, HeadwiseLayer):
            b, _, _, d = layer.keys.shape
            held += layer.nbytes()
            full += 2 * b * (len(layer.full) + len(layer.win)) * layer.seen * d * size
        else:
            both = 2 * layer.keys.numel() * size
            held, full = held + both, full + both
    return held, full


@contextmanager
def compressed(
    model: PreTrainedModel, headmap: HeadMap, budget: float | int = 0.3, sink: int = 4, window: int = WINDOW
) -> Iterator[PreTrainedModel]:
    """Within the block, every `model.generate()` call without its own cache (so every text-generation
    pipeline on this model) gets a fresh HeadwiseCache sized to its prompt; restored on exit.

    Prompts no longer than `sink + window` tokens drop nothing, so they get a plain cache."""
    headmap.check_model(model)
    original = model.generate

    def generate(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("past_key_values") is None and ids is not None and ids.shape[-1] > sink + window:
            kwargs["past_key_values"] = HeadwiseCache.from_headmap(
                model, headmap, budget=budget, sink=sink, window=window, context_length=ids.shape[-1]
            )
        return original(*args, **kwargs)

    model.generate = generate
    try:
        yield model
    finally:
        del model.generate  # the class's own generate shows through again


def cache_factory(
    model: PreTrainedModel,
    method: str,
    budget: float,
    headmap: HeadMap | None = None,
    sink: int = 4,
    window: int = WINDOW,
    reduce: str = "max",
) -> Callable[[NeedleTest], Cache]:
    """Per-test cache builder for a method: "full" (plain cache), "headwise" (full cache for the map's
    top KV heads by their query heads' `reduce` score, sink + `window` for the rest, sized to `budget`
    of each prompt), or "window" (StreamingLLM: every head keeps sink + a window sized to the same budget)."""
    if method == "full":
        return lambda test: DynamicCache(config=model.config)
    if method == "headwise":
        if headmap is None:
            raise HeadwiseError("the headwise cache needs a head map")
        return lambda test: HeadwiseCache.from_headmap(
            model, headmap, budget, sink=sink, window=window, context_length=len(test.ids), reduce=reduce
        )
    if method == "window":
        shape = model_shape(model)
        uniform = HeadMap(model_id(model), np.zeros((shape.num_layers, shape.num_heads)), shape.num_kv_heads)
        return lambda test: HeadwiseCache.from_headmap(
            model, uniform, retrieval_fraction=0.0, sink=sink, window=max(1, round(budget * len(test.ids)) - sink)
        )
    raise HeadwiseError(f"unknown cache {method!r}; choose full, headwise or window")


def split_budget(budget: float | int, total: int, sink: int, window: int, length: int) -> tuple[int, int]:
    """(KV heads kept full, window of the others) so that `total` KV heads at `length` tokens fit the budget.

    As many heads stay full as fit beside sink + `window` for the rest; the budget they leave over
    then widens the others' window, so no budget goes unused (on Gemma 3 no global head fits below 50%)."""
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
