"""The real model: the probe is exact, profiling finds the known retrieval heads, masking them breaks retrieval."""

import pytest
import torch
from transformers import DynamicCache

import headwise as hw
from headwise.core.generate import greedy
from headwise.core.headmap import HeadMap, overlap
from headwise.core.needles import is_correct
from headwise.eval.tasks import load_needles, make_tests
from headwise.scores.retrieval import DecodeRecorder


@pytest.fixture(scope="module")
def tests(smol, book):
    _, tok = smol
    return make_tests(tok, book, load_needles()[:3], [400], [0.2, 0.8], seed=7)


@pytest.fixture(scope="module")
def quick_map(smol, tests) -> HeadMap:
    model, tok = smol
    return hw.profile(model, tok, tests, progress=False)


@torch.inference_mode()
def test_decode_probe_matches_sdpa(smol, tests):
    model, _ = smol
    ids = tests[0].ids[None]
    cache = DynamicCache(config=model.config)
    model(ids[:, :-1], cache=cache, use_cache=True)
    plain = model(ids[:, -1:], cache=cache, use_cache=True).logits
    cache.crop(-1)
    recorder = DecodeRecorder()
    with hw.attach(model, recorder):
        probed = model(ids[:, -1:], cache=cache, use_cache=True).logits
    assert (recorder.argmax >= 0).all() and (recorder.argmax < ids.shape[1]).all()
    assert (plain - probed).abs().max() < 1e-3
    assert model.config._attn_implementation == "sdpa"  # restored on exit


def test_profile_finds_the_known_retrieval_heads(quick_map, smol):
    model, _ = smol
    assert quick_map.method["tests_counted"] >= 4
    above = quick_map.above(0.1)
    assert 1 <= len(above) <= 0.05 * quick_map.scores.size
    known = hw.shipped_headmap(model.headwise_id)
    assert quick_map.top(1)[0] in known.top(5)
    assert overlap(quick_map, known, 10) >= 5


def test_masking_top_heads_breaks_an_answer_and_is_undone(smol, tests, quick_map):
    model, tok = smol
    test = next(t for t in tests if is_correct(t.needle, greedy(model, tok, t.ids)))
    before = greedy(model, tok, test.ids)
    with hw.mask_heads(model, quick_map.top("5%"), "zero"):
        masked = greedy(model, tok, test.ids)
    assert not is_correct(test.needle, masked), masked
    assert greedy(model, tok, test.ids) == before


def test_masking_random_low_heads_keeps_the_answer(smol, tests, quick_map):
    model, tok = smol
    test = next(t for t in tests if is_correct(t.needle, greedy(model, tok, t.ids)))
    # The lowest-scoring heads of the upper layers: neither retrieval heads nor the early heads everything relies on.
    low = [h for h in reversed(quick_map.top(quick_map.scores.size)) if h[0] >= 10][:14]
    with hw.mask_heads(model, low, "uniform"):
        assert is_correct(test.needle, greedy(model, tok, test.ids))


def test_context_score_is_zero_when_the_window_sees_everything_and_grows_as_it_narrows(smol, tests):
    model, tok = smol
    wide = hw.profile(model, tok, tests[:1], "context", sink=4, window=10_000, progress=False)
    assert wide.kind == "context" and wide.scores.max() < 1e-4
    narrow = hw.profile(model, tok, tests[:2], "context", sink=4, window=16, progress=False).scores
    medium = hw.profile(model, tok, tests[:2], "context", sink=4, window=128, progress=False).scores
    assert narrow.mean() > medium.mean() > 0.01
    assert (narrow >= medium - 0.05).mean() > 0.9  # per head, too, with rare exceptions


def test_trained_gates_close_what_the_answers_can_spare(smol, tests):
    """GateScore: the L1 push closes many KV heads' gates, and a HeadwiseCache that windows exactly those
    heads still answers like the full cache, where windowing as many heads of the other end fails."""
    from headwise.scores.gates import GateScore

    model, tok = smol
    gates = hw.profile(model, tok, tests, GateScore(steps=48, l1=1.0, lr=0.05), progress=False)
    kv = gates.kv_scores()
    assert gates.kind == "gates" and ((kv >= 0) & (kv <= 1)).all()
    share = float((kv > 0).mean())
    assert share < 0.7  # the L1 term closed a good part of the 90 gates

    def answered(headmap):
        def cache():
            return hw.HeadwiseCache.from_headmap(model, headmap, retrieval_fraction=share, window=64)

        return sum(is_correct(t.needle, greedy(model, tok, t.ids, cache=cache())) for t in tests)

    full = sum(is_correct(t.needle, greedy(model, tok, t.ids)) for t in tests)
    reverse = HeadMap(gates.model, 1 - gates.scores, gates.num_kv_heads, kind="gates")
    assert answered(gates) == full
    assert answered(reverse) < full
