"""A head-wise KV cache: full history for chosen KV heads, sink + recent window for the rest.

Each layer stores a "full" tensor (the chosen KV heads, every token) and a "window" tensor (the other KV
heads, the first `sink` and last `window` tokens), so the bytes held shrink with the budget; nothing is
masked and kept. The cache is an attention hook: attached to the model (`attach(model, cache)`), it
computes its layers' attention, each part over its own keys. A windowed head attends to what it holds
plus the step's new tokens: the whole prompt in a one-shot prefill (its keys exist while the layer runs
and are dropped after it, as RazorAttention compresses after prefill), sink + window + the chunk in a
chunked prefill, sink + window + itself at a decode step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from headwise.core import attention
from headwise.core.headmap import HeadMap
from headwise.core.hooks import AttentionCall, AttentionHook
from headwise.core.models import ModelShape, model_shape, sliding_layers
from headwise.core.policy import SINK, WINDOW, split_budget
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class HeadwiseLayer(CacheLayerMixin):
    """One layer: `full` KV heads keep every token, the other (`win`) KV heads the first `sink` and last `window`."""

    is_sliding = False
    is_croppable = False

    def __init__(self, full: list[int], num_kv_heads: int, sink: int, window: int) -> None:
        super().__init__()
        self.full = torch.tensor(sorted(full), dtype=torch.long)
        self.win = torch.tensor(sorted(set(range(num_kv_heads)) - set(full)), dtype=torch.long)
        self.sink, self.window = sink, window
        self.seen = 0
        self.win_keys = self.win_values = self.win_pos = None
        # What the last update handed to attention: the window heads' keys, values and positions for this step.
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
        """Append new tokens; window heads see their window + the new tokens now, then drop what falls out."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new_pos = torch.arange(self.seen, self.seen + key_states.shape[2], device=key_states.device)
        self.seen += key_states.shape[2]
        self.keys = torch.cat([self.keys, key_states[:, self.full]], dim=2)
        self.values = torch.cat([self.values, value_states[:, self.full]], dim=2)
        wk = torch.cat([self.win_keys, key_states[:, self.win]], dim=2)
        wv = torch.cat([self.win_values, value_states[:, self.win]], dim=2)
        pos = torch.cat([self.win_pos, new_pos])
        self.step = (wk, wv, pos)
        # What the next token will see besides itself: the sink and the last `window` tokens.
        keep = attention.sink_window(torch.tensor([self.seen], device=pos.device), pos, self.sink, self.window + 1)[0]
        self.win_keys, self.win_values, self.win_pos = wk[:, :, keep], wv[:, :, keep], pos[keep]
        return self.keys, self.values

    def attend(self, query: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
        """Attention for this layer's last update: full KV heads over everything, window KV heads over what
        they hold plus the new tokens. Returns (batch, rows, heads, head_dim) like other attention functions."""
        win_k, win_v, win_pos = self.step
        self.step = None
        batch, heads, rows, dim = query.shape
        group = heads // (len(self.full) + len(self.win))
        out = query.new_empty(batch, heads, rows, dim)
        q_heads = torch.arange(heads, device=query.device).view(-1, group)  # query heads of each KV head
        if len(self.full):
            qi = q_heads[self.full].flatten()
            out[:, qi] = F.scaled_dot_product_attention(
                query[:, qi],
                self.keys,
                self.values,
                attn_mask=attention_mask,
                is_causal=attention_mask is None and rows > 1,
                scale=scaling,
                enable_gqa=True,
            )
        if len(self.win):
            qi = q_heads[self.win].flatten()
            q_pos = torch.arange(self.seen - rows, self.seen, device=query.device)
            mask = attention.causal(q_pos, win_pos)[None, None]  # over what is held plus the new tokens
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


class HeadwiseCache(Cache, AttentionHook):
    """A KV cache that keeps full history only for chosen KV heads. Pass it to the model as its cache and
    attach it, so that its layers attend through it:

        with attach(model, cache):
            model.generate(ids, cache=cache)
    """

    def __init__(self, layers: list[CacheLayerMixin], full: list[list[int]], sink: int, window: int) -> None:
        super().__init__(layers=layers)
        self.full_heads = full
        self.sink, self.window = sink, window
        self.hooked_layers = frozenset(i for i, layer in enumerate(layers) if isinstance(layer, HeadwiseLayer))
        self.attached = False

    @classmethod
    def from_headmap(
        cls,
        model: PreTrainedModel,
        headmap: HeadMap,
        budget: float | int | None = None,
        retrieval_fraction: float | None = None,
        sink: int = SINK,
        window: int = WINDOW,
        context_length: int | None = None,
        reduce: str = "max",
    ) -> HeadwiseCache:
        """Keep the KV heads the map ranks highest (by their query heads' `reduce` score) in full.

        Give either `retrieval_fraction` (share of KV heads kept full) or `budget`: a fraction of the full
        cache's bytes at `context_length` tokens, or a token count per KV head on average. With a budget,
        `window` is the least the other heads keep: what the full heads leave widens it. Both count only the
        layers with global attention: a model's sliding-window layers keep their own cache."""
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
        return cls.for_heads(model, headmap.best_kv_heads(n_full, sliding, reduce), sink, window)

    @classmethod
    def for_heads(cls, model: PreTrainedModel, full: list[list[int]], sink: int, window: int) -> HeadwiseCache:
        """An empty cache keeping in full the KV heads listed per layer and sink + window for the others; a
        model's sliding-window layers keep their own cache layer (and count as full)."""
        shape, sliding = model_shape(model), sliding_layers(model)
        full = [list(range(shape.num_kv_heads)) if layer in sliding else heads for layer, heads in enumerate(full)]
        layers: list[CacheLayerMixin] = []
        for layer, heads in enumerate(full):
            if layer in sliding:
                layers.append(DynamicSlidingWindowLayer(sliding_window=sliding[layer]))
            elif len(heads) == shape.num_kv_heads:
                layers.append(DynamicLayer())
            else:
                layers.append(HeadwiseLayer(heads, shape.num_kv_heads, sink, window))
        return cls(layers, full, sink, window)

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Attached: the model may now run with this cache."""
        if len(self.layers) != shape.num_layers:
            raise HeadwiseError(f"this cache has {len(self.layers)} layers; the model has {shape.num_layers}")
        self.attached = True

    def remove(self) -> None:
        """Detached."""
        self.attached = False

    def attend(self, call: AttentionCall) -> torch.Tensor | None:
        """A head-wise layer's output, when this cache served the call's keys (its layer was just updated)."""
        layer = self.layers[call.layer]
        return layer.attend(call.query, call.mask, call.scaling) if layer.step is not None else None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache.update, refused while the cache is not attached: other attention would read its split keys wrong."""
        if self.hooked_layers and not self.attached:
            raise HeadwiseError(
                "a HeadwiseCache must be attached to the model it serves: "
                "`with headwise.attach(model, cache): model.generate(..., cache=cache)`"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

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
