"""Attention math that hooks share, written once: float32 logits grouped by KV head, the sink + recent-window
view of a windowed head, softmax-weighted outputs, and a prefill's attention as blocked bfloat16 matmuls.

Shapes: queries (batch, heads, rows, head_dim), keys and values (batch, kv_heads, keys, head_dim);
grouped logits (batch, kv_heads, group, rows, keys), where group = heads // kv_heads.
"""

from __future__ import annotations

import torch


def logits(query: torch.Tensor, key: torch.Tensor, scaling: float, softcap: float | None = None) -> torch.Tensor:
    """Float32 attention logits per query head, grouped under its KV head: (batch, kv_heads, group, rows, keys)."""
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    q = query.float().view(batch, kv_heads, heads // kv_heads, rows, dim)
    out = torch.einsum("bkgmd,bktd->bkgmt", q, key.float()) * scaling
    if softcap:
        out = torch.tanh(out / softcap) * softcap
    return out


def sink_window(q_pos: torch.Tensor, k_pos: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """(rows, keys) bool: which keys a windowed head attends from each query position. Causal: the first
    `sink` positions, and the last `recent` positions up to and including the query's own."""
    q, k = q_pos[:, None], k_pos[None]
    return (k <= q) & ((k < sink) | (k > q - recent))


def causal(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(rows, keys) bool: the keys at or before each query position."""
    return k_pos[None] <= q_pos[:, None]


def masked_softmax(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of the positions `visible` (broadcast to `scores`) alone."""
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


def weighted_values(weights: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Grouped weights (batch, kv_heads, group, rows, keys) times values: (batch, kv_heads, group, rows, head_dim)."""
    return torch.einsum("bkgmt,bktd->bkgmd", weights, value.float())


def full_and_window(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    q_pos: torch.Tensor,
    scaling: float,
    softcap: float | None,
    sink: int,
    recent: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 outputs of the query rows at positions `q_pos` over all keys (causal) and over their sink +
    `recent` window, from one set of logits; both grouped, (batch, kv_heads, group, rows, head_dim)."""
    scores = logits(query, key, scaling, softcap)
    k_pos = torch.arange(key.shape[2], device=key.device)
    full = weighted_values(masked_softmax(scores, causal(q_pos, k_pos)), value)
    win = weighted_values(masked_softmax(scores, sink_window(q_pos, k_pos, sink, recent)), value)
    return full, win


def ungroup(out: torch.Tensor) -> torch.Tensor:
    """Grouped outputs (batch, kv_heads, group, rows, head_dim) as (batch, rows, heads, head_dim), the layout
    transformers' attention functions return."""
    batch, kv_heads, group, rows, dim = out.shape
    return out.reshape(batch, kv_heads * group, rows, dim).transpose(1, 2)


PREFILL_BLOCK = 256  # query rows per block: fastest of 256/384/512 from 1K to 8K tokens (bench/prefill_attention.py)


def blocked_prefill(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Self-attention of a prefill (as many query rows as keys) as batched matmuls in the inputs' dtype,
    PREFILL_BLOCK query rows at a time against only the keys those rows may see: causal without `mask`; with
    a (1, 1, rows, keys) bool `mask` (True: may attend; every row some key), the keys it allows, so a
    sliding-window layer multiplies a window, not the whole prompt. Returns (batch, rows, heads, head_dim),
    the layout transformers' attention functions return.

    On a CPU with bfloat16 dot-product instructions the attention runs 1.7-3x faster than PyTorch's flash
    kernel, which computes in float32 there. Logits and weights are held in bfloat16 (the softmax itself runs
    in float32): hidden states differ from a float32 model's as much as with PyTorch's kernel
    (docs/experiments/ruler.md)."""
    batch, heads, rows, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    q = (query * scaling).reshape(batch * kv_heads, group, rows, dim)
    k = key.reshape(batch * kv_heads, rows, dim)
    v = value.reshape(batch * kv_heads, rows, dim)
    future = torch.full((PREFILL_BLOCK, PREFILL_BLOCK), float("-inf"), dtype=query.dtype, device=query.device)
    future = future.triu(1)
    out = query.new_empty(batch, rows, heads, dim)
    for begin in range(0, rows, PREFILL_BLOCK):
        end = min(rows, begin + PREFILL_BLOCK)
        n = end - begin
        first, last = 0, end
        if mask is not None:
            allowed = mask[0, 0, begin:end]
            seen = allowed.any(0).nonzero()
            first, last = int(seen[0]), int(seen[-1]) + 1
        block = q[:, :, begin:end].reshape(batch * kv_heads, group * n, dim)
        scores = torch.bmm(block, k[:, first:last].transpose(1, 2)).view(batch * kv_heads, group, n, last - first)
        if mask is None:
            scores[..., begin:end] += future[:n, :n]
        else:
            scores.masked_fill_(~allowed[:, first:last], float("-inf"))
        weights = torch.softmax(scores, -1).view(batch * kv_heads, group * n, last - first)
        part = torch.bmm(weights, v[:, first:last]).view(batch, kv_heads, group, n, dim)
        out[:, begin:end] = part.permute(0, 3, 1, 2, 4).reshape(batch, n, heads, dim)
    return out
