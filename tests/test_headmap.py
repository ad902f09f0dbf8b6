"""Head maps: selection, KV aggregation, native round trip, foreign formats, and refusal of bad files."""

import json

import numpy as np
import pytest

from headwise.core.headmap import HeadMap, overlap
from headwise.errors import HeadwiseError


def make_map(model="smollm2-135m", layers=30, heads=9, kv=3, seed=0) -> HeadMap:
    rng = np.random.default_rng(seed)
    return HeadMap(model, rng.random((layers, heads)) ** 8, kv, sink=rng.random((layers, heads)))


def test_top_k_by_count_fraction_and_percent():
    hm = make_map()
    best = np.unravel_index(hm.scores.argmax(), hm.scores.shape)
    assert hm.top(1) == [tuple(int(i) for i in best)]
    assert len(hm.top("5%")) == len(hm.top(0.05)) == 14 == len(hm.top(14))
    scores = [hm.scores[h] for h in hm.top(20)]
    assert scores == sorted(scores, reverse=True)
    for bad in ("271", 0, "abc", "2.5"):
        with pytest.raises(HeadwiseError):
            hm.top(bad)


def test_kv_aggregate_takes_group_max_or_mean():
    hm = make_map()
    kv = hm.kv_scores()
    assert kv.shape == (30, 3)
    assert kv[4, 1] == hm.scores[4, 3:6].max()
    assert np.isclose(hm.kv_scores("mean")[4, 1], hm.scores[4, 3:6].mean())


def test_ties_are_broken_by_another_map_and_survive_saving(tmp_path):
    gates = np.zeros((30, 9))
    gates[5] = 0.9  # layer 5 is kept first, whatever the other map says
    gates[2] = 0.9 + 1e-5  # a near-tie with layer 5
    other = make_map()
    ranked = HeadMap.load(HeadMap("smollm2-135m", gates, 3).with_ties_broken_by(other).save(tmp_path / "t.json"))
    top = ranked.top(18)
    assert {layer for layer, _ in top} == {2, 5}  # distinct scores keep their order
    zero_tied = [h for h in ranked.top(270) if gates[h] == 0]
    expected = [h for h in other.top(270) if gates[h] == 0]
    assert zero_tied == expected  # the rest rank by the other map, not by position
    assert "tie_break" in ranked.method
    with pytest.raises(HeadwiseError):
        ranked.with_ties_broken_by(make_map(layers=24))


def test_native_round_trip(tmp_path):
    hm = make_map()
    hm.method = {"tests": 3}
    back = HeadMap.load(hm.save(tmp_path / "m.json"))
    assert back.model == hm.model and back.num_kv_heads == 3 and back.method == {"tests": 3}
    assert np.allclose(back.scores, hm.scores, atol=1e-6) and np.allclose(back.sink, hm.sink, atol=1e-6)
    assert overlap(back, hm, 10) == 10


def test_foreign_formats_round_trip(tmp_path, smol):
    model, _ = smol
    hm = make_map()
    rh = HeadMap.load(hm.save(tmp_path / "m.rh.json"), model)
    assert np.allclose(rh.scores, hm.scores, atol=1e-6)
    assert set(json.loads((tmp_path / "m.rh.json").read_text())) == {f"{l}-{h}" for l in range(30) for h in range(9)}
    duo = HeadMap.load(hm.save(tmp_path / "m.tsv"), model)
    assert np.loadtxt(tmp_path / "m.tsv").shape == (30, 3)
    assert np.allclose(duo.kv_scores(), hm.kv_scores(), atol=1e-6)
    assert np.allclose(duo.scores[:, 0], duo.scores[:, 2])  # query heads inherit their KV head's gate


def test_bad_files_are_refused(tmp_path, smol):
    model, _ = smol
    cases = {
        "garbage.json": "{not json",
        "other.json": json.dumps({"hello": 1}),
        "version.json": json.dumps({**make_map().to_dict(), "version": 99}),
        "header.json": json.dumps({**make_map().to_dict(), "num_layers": 12}),
        "nan.json": json.dumps({**make_map().to_dict(), "scores": [[float("nan")] * 9] * 30}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(HeadwiseError):
            HeadMap.load(tmp_path / name)
    with pytest.raises(HeadwiseError, match="cannot read"):
        HeadMap.load(tmp_path / "absent.json")
    (tmp_path / "short.tsv").write_text("0.1\t0.2\n")
    with pytest.raises(HeadwiseError, match="needs 30 layers x 3 KV heads"):
        HeadMap.load(tmp_path / "short.tsv", model)
    (tmp_path / "rh.json").write_text(json.dumps({"40-0": [0.5]}))
    with pytest.raises(HeadwiseError, match="does not fit"):
        HeadMap.load(tmp_path / "rh.json", model)


def test_map_of_another_model_is_refused(tmp_path, smol):
    model, _ = smol
    with pytest.raises(HeadwiseError, match="profile this model first"):
        HeadMap.load(make_map("gemma3-270m", 18, 4, 1).save(tmp_path / "g.json"), model)
    with pytest.raises(HeadwiseError, match="measured on"):
        HeadMap.load(make_map("some/other-model").save(tmp_path / "o.json"), model)


def test_shipped_maps_by_kind_and_the_cache_default():
    from headwise.core.shipped import cache_headmap, shipped_headmap

    gates = shipped_headmap("smollm2-135m", "gates")
    assert gates.kind == "gates" and gates.scores.shape == (30, 9)
    ties = gates.with_ties_broken_by(shipped_headmap("smollm2-135m"))
    kv, raw = ties.kv_scores(), gates.kv_scores()
    top = {name: set(np.argsort(-m, axis=None, kind="stable")[:26]) for name, m in (("ties", kv), ("raw", raw))}
    assert top["ties"] == top["raw"]  # at 30% (26 of 90 KV heads full) the same heads stay full
    assert (raw == 0).sum() > 30 and len(np.unique(kv)) == kv.size  # ...and no two heads tie any more
    default = cache_headmap("smollm2-135m")  # no cache map shipped: those gates, zero gates ordered by retrieval
    assert default.kind == "gates" and "tie_break" in default.method and "swaps" not in default.method
    assert np.array_equal(default.kv_scores(), kv)
    with pytest.raises(HeadwiseError, match="retrieval, gates, cache"):
        shipped_headmap("smollm2-135m", "context")
    gemma = cache_headmap("gemma3-270m")  # no gate map shipped: the retrieval map ranks its KV heads
    assert gemma.kind == "retrieval" and gemma.scores.shape == (18, 4)
    with pytest.raises(HeadwiseError, match=r"headwise profile --model qwen3-0\.6b"):
        cache_headmap("qwen3-0.6b")  # no shipped map of any kind: says how to make one
