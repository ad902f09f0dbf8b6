"""HeadwiseCache: exact when nothing is dropped, really smaller when something is, and usable by generate()."""

import copy
from contextlib import nullcontext

import pytest
import torch
from transformers import DynamicCache

import headwise as hw
from headwise.core.cache import HeadwiseCache, HeadwiseLayer
from headwise.core.caches import build_cache, compressed
from headwise.core.headmap import HeadMap
from headwise.core.hooks import attach, attached
from headwise.core.needles import is_correct
from headwise.core.policy import CachePolicy, split_budget
from headwise.core.shipped import cache_headmap, shipped_headmap
from headwise.errors import HeadwiseError
from headwise.eval.tasks import load_needles, make_test, make_tests


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (2, 200))
    mask = torch.ones_like(ids)
    mask[1, :15] = 0  # left padding on the second row
    return ids, mask


def logits(model, ids, mask, cache, chunk=None):
    chunk = chunk or ids.shape[1]
    with torch.inference_mode(), attach(model, cache) if isinstance(cache, HeadwiseCache) else nullcontext():
        return torch.cat(
            [
                model(ids[:, s : s + chunk], attention_mask=mask[:, : s + chunk], cache=cache).logits
                for s in range(0, ids.shape[1], chunk)
            ],
            dim=1,
        )


def cache_of(full, window, sink=4):
    return HeadwiseCache([HeadwiseLayer(full, 3, sink, window) for _ in range(30)], [full] * 30, sink, window)


def generate(model, ids, cache, **kwargs):
    with attach(model, cache):
        return model.generate(ids, cache=cache, do_sample=False, **kwargs)


@pytest.mark.parametrize("full", [[0, 1, 2], [], [1]])
@pytest.mark.parametrize("chunk", [None, 48])
def test_nothing_dropped_means_full_attention(smol, batch, full, chunk):
    model, _ = smol
    ids, mask = batch
    ref = logits(model, ids, mask, DynamicCache(config=model.config))
    got = logits(model, ids, mask, cache_of(full, window=10_000), chunk)
    assert (got - ref)[0].abs().max() < 1e-3
    assert (got - ref)[1, 15:].abs().max() < 1e-3  # padded positions carry no meaning


def test_window_heads_really_hold_less(smol, batch):
    model, _ = smol
    ids, mask = batch
    cache = cache_of([1], window=16)
    logits(model, ids, mask, cache)
    layer = cache.layers[0]
    assert layer.win_keys.shape[2] == 4 + 16 and layer.keys.shape[2] == 200
    assert cache.nbytes() == pytest.approx(cache.full_nbytes() * (200 + 2 * 20) / (3 * 200))


def test_prefill_sees_the_whole_prompt_and_decoding_only_what_is_held(smol, batch):
    model, _ = smol
    ids, mask = batch
    full, cache = DynamicCache(config=model.config), cache_of([1], window=16)
    ref, got = logits(model, ids, mask, full), logits(model, ids, mask, cache)
    assert (got - ref)[0].abs().max() < 1e-3  # one-shot prefill: window heads attended to the whole prompt
    step = torch.ones(2, 1, dtype=mask.dtype)
    with torch.inference_mode(), attach(model, cache):
        nxt = [model(ids[:, -1:], attention_mask=torch.cat([mask, step], 1), cache=c).logits for c in (full, cache)]
    assert (nxt[0] - nxt[1]).abs().max() > 0.1  # decoding: heads 0 and 2 see only sink + window now


def test_gates_train_against_exactly_what_the_cache_serves(smol, batch):
    """Gate training decodes answers through WindowGates after a full prefill: with gate 0 on some KV heads
    that must be the HeadwiseCache that windows those heads, and with gate 1 the full cache."""
    from headwise.scores.gates import WindowGates

    model, _ = smol
    ids = batch[0][:1]
    prompt, answer = ids[:, :150], ids[:, 150:]
    gates = WindowGates(30, 3, sink=4, window=16, layers=list(range(30)))
    with torch.no_grad():
        gates.gate[:, [0, 2]] = 0.0
    with torch.inference_mode():
        served = cache_of([1], window=16)
        with attach(model, served):
            model(prompt, cache=served)
            steps = torch.cat([model(answer[:, i : i + 1], cache=served).logits for i in range(10)], 1)
        for windowed, want in ((gates, steps), (WindowGates(30, 3, 4, 16, list(range(30))), None)):
            cache = DynamicCache(config=model.config)
            model(prompt, cache=cache)
            plain = model(answer[:, :10], cache=copy.deepcopy(cache)).logits
            with attach(model, windowed):
                got = model(answer[:, :10], cache=cache).logits
            assert (got - (plain if want is None else want)).abs().max() < 1e-3
    assert (steps - plain).abs().max() > 0.1  # the windowed heads did change the answer's logits


def test_budget_picks_the_top_kv_heads_and_generate_works(smol):
    model, tok = smol
    hm = shipped_headmap("smollm2-135m")
    cache = HeadwiseCache.from_headmap(model, hm, budget=0.3, context_length=2000, window=8)
    full = [(l, h) for l, heads in enumerate(cache.full_heads) for h in heads]
    assert (len(full), cache.window) == split_budget(0.3, 90, 4, 8, 2000)
    best = tuple(int(i) for i in divmod(int(hm.kv_scores().argmax()), 3))
    assert best in full
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with attach(model, cache):
        out = model.generate(**enc, cache=cache, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])
    assert cache.nbytes() < cache.full_nbytes()


def test_sliding_window_layers_keep_their_own_cache_and_the_budget_spends_on_global_ones(gemma, book):
    from headwise.core.models import sliding_layers

    model, tok, headmap = gemma
    sliding = sliding_layers(model)
    cache = HeadwiseCache.from_headmap(model, headmap, budget=0.7, window=64, context_length=1200)
    chosen = [layer for layer, heads in enumerate(cache.full_heads) if heads and layer not in sliding]
    assert len(chosen) == 2  # of the 3 global layers' KV heads, 2 fit 70% of their bytes at 1,200 tokens
    needle = load_needles()[-2]
    test = make_test(tok, book, needle, 1200, 0.5, start=10)
    out = generate(model, test.ids[None], cache, max_new_tokens=24)
    assert is_correct(needle, tok.decode(out[0, len(test.ids) :], skip_special_tokens=True))
    assert cache.nbytes() < cache.full_nbytes()
    # At 30% no global KV head fits in full: the budget must widen the window, not go unused.
    small = HeadwiseCache.from_headmap(model, headmap, budget=0.3, window=64, context_length=len(test.ids))
    with torch.inference_mode(), attach(model, small):
        model(test.ids[None], cache=small)
    globals_ = [layer for layer in small.layers if isinstance(layer, HeadwiseLayer)]
    assert len(globals_) == 3 and all(layer.full.numel() == 0 for layer in globals_)
    held = sum(layer.nbytes() for layer in globals_)
    whole = sum(layer.nbytes() * layer.seen // layer.win_keys.shape[2] for layer in globals_)
    assert 0.28 < held / whole <= 0.3


def test_bad_budgets_are_refused(smol):
    model, _ = smol
    hm = shipped_headmap("smollm2-135m")
    for kwargs in (
        {"budget": 1.5},
        {"budget": 0.0},
        {"retrieval_fraction": 2.0},
        {},
        {"budget": 0.3, "retrieval_fraction": 0.1},
    ):
        with pytest.raises(HeadwiseError):
            HeadwiseCache.from_headmap(model, hm, context_length=2000, **kwargs)
    with pytest.raises(HeadwiseError, match="not smaller than the context"):
        HeadwiseCache.from_headmap(model, hm, budget=0.3, window=4096, context_length=1000)
    with pytest.raises(HeadwiseError, match="profile this model first"):
        HeadwiseCache.from_headmap(model, HeadMap("gemma3-270m", hm.scores[:18, :4], 1), budget=0.3)


def test_compressed_gives_every_generate_call_its_own_headwise_cache(smol, book):
    model, tok = smol
    needle = load_needles()[0]
    test = make_test(tok, book, needle, 600, 0.5, start=10)
    with compressed(model, shipped_headmap("smollm2-135m"), budget=0.5, window=64):
        out = model.generate(test.ids[None], max_new_tokens=16, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    assert isinstance(cache, HeadwiseCache) and not cache.attached and cache.nbytes() < 0.6 * cache.full_nbytes()
    assert "generate" not in vars(model)  # the wrapper is gone after the block
    assert model.config._attn_implementation == "sdpa"
    answer = tok.decode(out.sequences[0, len(test.ids) :], skip_special_tokens=True)
    assert is_correct(needle, answer), answer


def test_the_default_cache_ranking_keeps_a_needle_that_sink_and_window_lose_at_30_percent(smol, book):
    model, tok = smol
    headmap = cache_headmap("smollm2-135m")
    assert headmap.kind == "gates"  # the shipped gate map, not the retrieval map
    needle = load_needles()[-1]
    test = make_test(tok, book, needle, 1200, 0.5, start=10)
    answers = {}
    for name, cache in (
        ("headwise", HeadwiseCache.from_headmap(model, headmap, budget=0.3, context_length=len(test.ids))),
        ("window", build_cache(model, CachePolicy("window", 0.3), len(test.ids))),
    ):
        out = generate(model, test.ids[None], cache, max_new_tokens=24)
        answers[name] = tok.decode(out[0, len(test.ids) :], skip_special_tokens=True)
        assert cache.nbytes() <= 0.3 * cache.full_nbytes()
    assert is_correct(needle, answers["headwise"]), answers
    assert not is_correct(needle, answers["window"]), answers  # the same bytes spent evenly lose the needle


def test_the_default_ranking_copies_a_rare_word_token_by_token_at_30_percent(smol):
    """The dev grid's 1.2K-token, depth-0.5 "Silver Albatross" test (kv_cache-dev.md): the model copies "Alb" and
    must copy the rest. Gates trained without made-up-name needles wrote "Silver Albaunt" here at every budget
    up to 90%; the default, trained with them, copies the word at 30% (it still misses 6 of the grid's 15)."""
    from headwise.eval.haystack import load_haystack

    model, tok = smol
    depths = [0.1, 0.3, 0.5, 0.7, 0.9]
    dev = make_tests(tok, load_haystack("pride-and-prejudice"), load_needles()[4:7], [1200, 2400, 4000], depths, 5)
    test = dev[17]  # the dev grid's order: needle, then length, then depth
    needle = test.needle
    assert (needle.answer, test.length, test.depth) == ("Silver Albatross", 1200, 0.5)
    ranking = cache_headmap("smollm2-135m")
    answers = {}
    for name, cache in (
        ("headwise", HeadwiseCache.from_headmap(model, ranking, 0.3, context_length=len(test.ids))),
        ("window", build_cache(model, CachePolicy("window", 0.3), len(test.ids))),
    ):
        out = generate(model, test.ids[None], cache, max_new_tokens=16)
        answers[name] = tok.decode(out[0, len(test.ids) :], skip_special_tokens=True)
    assert is_correct(needle, answers["headwise"]), answers
    assert not is_correct(needle, answers["window"]), answers


def test_an_unattached_headwise_cache_is_refused(smol):
    model, _ = smol
    cache = HeadwiseCache.from_headmap(model, shipped_headmap("smollm2-135m"), budget=0.3, context_length=500)
    with pytest.raises(HeadwiseError, match="must be attached"):
        model(torch.arange(100, 400)[None], cache=cache)


def test_probing_a_layer_the_cache_computes_is_refused_and_the_model_is_restored(smol):
    from headwise.scores.retrieval import DecodeRecorder

    model, _ = smol
    cache = cache_of([1], window=16)
    with pytest.raises(HeadwiseError, match="cannot read layer 0"), attach(model, cache, DecodeRecorder()):
        pass
    assert model.config._attn_implementation == "sdpa"
    assert not attached(model) and not cache.attached
    with pytest.raises(HeadwiseError, match="both compute"), attach(model, cache, cache_of([0], window=8)):
        pass


def test_attach_restores_the_model_when_the_block_raises(smol):
    model, _ = smol
    before = {name: type(m).forward for name, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"), hw.mask_heads(model, [(3, 1)], "zero"):
        assert model.config._attn_implementation == "headwise"
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, "_headwise_plan") for m in model.modules()) and not hasattr(model, "_headwise_hooks")
    assert before == {name: type(m).forward for name, m in model.named_modules()}


def test_the_cache_policy_refuses_bad_settings_without_a_model():
    for kwargs in ({"kind": "lru"}, {"budget": 0.0}, {"budget": 1.5}, {"window": 0}, {"reduce": "min"}):
        with pytest.raises(HeadwiseError):
            CachePolicy(**kwargs)
    assert CachePolicy("headwise", 0.3).label == "headwise-30%"
