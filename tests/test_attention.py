"""The blocked prefill: the same attention as PyTorch's SDPA, and what a bfloat16 model runs on CPUs with
bfloat16 instructions while headwise is attached."""

import pytest
import torch
import torch.nn.functional as F

from headwise.core import attention, hooks
from headwise.core.generate import greedy_tokens
from headwise.core.hooks import attach
from headwise.core.models import load_model


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "dim", "rows", "window"),
    [
        (2, 9, 3, 64, 600, None),  # SmolLM2-shaped, causal
        (1, 4, 1, 256, 700, 100),  # Gemma-shaped sliding-window layer: a boolean mask
        (1, 6, 6, 32, 257, None),  # no grouping, one row past a block
    ],
)
def test_blocked_prefill_is_the_attention_sdpa_computes(batch, heads, kv_heads, dim, rows, window):
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, h, rows, dim) for h in (heads, kv_heads, kv_heads))
    mask = None
    if window is not None:
        pos = torch.arange(rows)
        mask = ((pos[None] <= pos[:, None]) & (pos[None] > pos[:, None] - window))[None, None]

    def sdpa(*qkv):
        return F.scaled_dot_product_attention(
            *qkv, attn_mask=mask, is_causal=mask is None, enable_gqa=True, scale=0.1
        ).transpose(1, 2)

    reference = sdpa(q, k, v)
    # float32 inputs: the blocks, the keys each block multiplies and the masking are exact
    torch.testing.assert_close(attention.blocked_prefill(q, k, v, 0.1, mask), reference, atol=2e-5, rtol=1e-4)
    # bfloat16 inputs: no further from float32 than PyTorch's own bfloat16 kernel, within a factor 2
    low = [t.bfloat16() for t in (q, k, v)]
    ours = (attention.blocked_prefill(*low, 0.1, mask).float() - reference).abs().max()
    assert ours <= 2 * (sdpa(*low).float() - reference).abs().max()


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def bf16_model(request):
    """(model, tokenizer) in bfloat16: a grouped-query model, and one with sliding-window layers."""
    return load_model(request.param, dtype="bfloat16")


def test_a_bfloat16_model_prefills_through_the_blocked_kernel_and_answers_as_with_sdpa(bf16_model, book, monkeypatch):
    if not hooks._cpu_bf16():
        pytest.skip("this CPU has no bfloat16 instructions: headwise keeps PyTorch's SDPA here")
    model, tok = bf16_model
    ids = torch.tensor(tok(book.text[30_000:34_000]).input_ids[:700] + tok(" The").input_ids)
    with torch.inference_mode():
        plain = model(ids[None], output_hidden_states=True).hidden_states[-1]
    calls = []
    blocked = attention.blocked_prefill
    monkeypatch.setattr(attention, "blocked_prefill", lambda *a: calls.append(1) or blocked(*a))
    with torch.inference_mode(), attach(model):
        ours = model(ids[None], output_hidden_states=True).hidden_states[-1]
    layers = model.config.get_text_config().num_hidden_layers
    assert len(calls) == layers  # every layer's prefill took the blocked path, sliding-window layers too
    assert float((ours - plain).float().norm() / plain.float().norm()) < 0.02
    calls.clear()
    sdpa = model.generate(ids[None], max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist()
    assert not calls  # outside headwise, the model's own SDPA
    assert greedy_tokens(model, tok, ids, 8) == sdpa
    assert len(calls) == layers  # headwise's own prefill takes the blocked path
