"""Relevance heads and fusion: heads scored by their own ranking of labelled queries, a tuned head count and
fusion weight stored in the map, and `rank(..., fuse=...)` / `headwise rank --fuse` using them."""

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from headwise.apps.rank import READINGS, Doc, Reading, attention_tables, fused, rank, span_sums
from headwise.cli import app
from headwise.errors import HeadwiseError
from headwise.eval.relevance import TOPS, load_qrels, profile_relevance
from headwise.scores.relevance import head_ndcg, ndcg_at_10, relevance_headmap

DOCS = [
    Doc("bees", "Honey bees perform a waggle dance that tells other bees the direction of flowers."),
    Doc("tea", "Green tea is made from leaves that are steamed so that they do not oxidize."),
    Doc("volcano", "Lava from the volcano cooled into black basalt along the island's coast."),
    Doc("chess", "In chess, castling moves the king two squares towards a rook."),
    Doc("rust", "Iron rusts when it reacts with oxygen and water, forming iron oxide."),
    Doc("whales", "Humpback whales sing long songs that change from one season to the next."),
]
QUERIES = {
    "q1": "How do bees tell each other where flowers are?",
    "q2": "Why does green tea not oxidize?",
    "q3": "What rock forms when lava cools?",
    "q4": "Which chess move involves the king and a rook?",
    "q5": "What happens to iron in water and air?",
    "q6": "Do whale songs change over time?",
}
QRELS = {"q1": {"bees"}, "q2": {"tea"}, "q3": {"volcano"}, "q4": {"chess"}, "q5": {"rust"}, "q6": {"whales"}}


def test_ndcg_and_per_head_scores():
    assert ndcg_at_10(["a", "b"], {"a"}) == 1.0 and ndcg_at_10(["b", "a"], {"a"}) == pytest.approx(1 / np.log2(3))
    mass = np.array([[[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]]])  # 1 layer, 2 heads, 3 documents; document 0 relevant
    scores = head_ndcg([mass], [np.array([True, False, False])], [1])
    assert scores[0, 0] == 1.0 and scores[0, 1] == pytest.approx(0.5)
    unread = np.concatenate([mass, np.zeros((1, 1, 3))], axis=1)  # a third head never read (sliding window)
    hm = relevance_headmap("m", 1, [unread], [np.array([True, False, False])], [1])
    assert hm.scores[0].tolist() == pytest.approx([1.0, 0.5, 0.0])  # not 1.0 from the candidates' own order
    z = fused(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), 1.0)
    assert np.argmax(z) == 2 and np.allclose(fused(np.ones(3), np.arange(3.0), 0.5), [-0.612, 0, 0.612], atol=1e-3)


def test_outlier_tokens_are_dropped_within_each_document():
    doc = [0.1] * 20 + [-5.0]  # one token far below the rest of its document
    weights = np.array([[[*doc, 1.0, 2.0]]])  # one layer, one head; a second document of two tokens
    plain = span_sums(weights, [(0, 21), (21, 23)], drop_outliers=False)
    kept = span_sums(weights, [(0, 21), (21, 23)], drop_outliers=True)
    assert plain[0, 0] == pytest.approx([-3.0, 3.0]) and kept[0, 0] == pytest.approx([2.0, 3.0])


@pytest.fixture(scope="module")
def relevance_map(smol):
    model, tok = smol
    return profile_relevance(model, tok, QUERIES, DOCS, QRELS, candidates=6, progress=False)


def test_relevance_heads_are_found_and_tuned_on_the_labelled_queries(relevance_map):
    hm = relevance_map
    assert hm.kind == "relevance" and hm.method["queries"] == 6 and hm.method["top"] in TOPS
    assert 0.0 <= hm.method["fusion"]["weight"] <= 1.0
    assert hm.scores.max() == 1.0  # at least one head alone ranks every relevant document first
    assert hm.method["ndcg@10"] >= 0.9, hm.method
    assert Reading.of(hm) in READINGS and hm.method["reading"]["rows"] in ("query", "turn")


def test_rank_reads_the_tuned_heads_and_fuses(smol, relevance_map):
    model, tok = smol
    query = "Which insects dance to point the way to flowers?"
    first_stage = [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]  # a first stage that prefers tea
    alone = rank(model, tok, query, DOCS, relevance_map)
    assert alone[0][0] == "bees", alone
    assert rank(model, tok, query, DOCS, relevance_map, fuse=first_stage, weight=0.0)[0][0] == "tea"
    with pytest.raises(HeadwiseError, match="one per document"):
        rank(model, tok, query, DOCS, relevance_map, fuse=[1.0])
    broken = replace(relevance_map, method={**relevance_map.method, "reading": {"rows": "middle"}})
    with pytest.raises(HeadwiseError, match="malformed"):
        rank(model, tok, query, DOCS, broken)


def test_every_reading_comes_from_one_pair_of_passes_and_ranks(smol, relevance_map):
    model, tok = smol
    tables, passes, _ = attention_tables(model, tok, QUERIES["q3"], DOCS)
    assert passes == 2 and set(tables) == set(READINGS)
    assert not np.allclose(tables[Reading("query")], tables[Reading("turn")])
    query = "Which insects dance to point the way to flowers?"
    for reading in READINGS:  # the tuned heads rank a paraphrased query's document first whichever way they read
        order = rank(model, tok, query, DOCS, relevance_map, reading=reading)
        assert order[0][0] == "bees", (reading, order)


def test_the_cli_fuses_with_bm25_and_refuses_bad_input(tmp_path, smol):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"id": d.id, "text": d.text}) for d in DOCS))
    run = CliRunner().invoke
    result = run(app, ["rank", "--query", QUERIES["q5"], "--docs", str(docs), "--fuse", "bm25", "--weight", "0.5"])
    assert result.exit_code == 0 and result.stdout.split()[2] == "rust", result.output
    result = run(app, ["rank", "--query", "x", "--docs", str(docs), "--fuse", "score"])
    assert result.exit_code == 2 and 'numeric "score"' in result.output
    result = run(app, ["rank", "--query", "x", "--docs", str(docs), "--fuse", "bm25"])
    assert result.exit_code == 2 and "records no fusion weight" in result.output  # the needle map was not tuned
    result = run(app, ["profile", "--score", "relevance", "--docs", str(docs)])
    assert result.exit_code == 2 and "needs --queries, --docs and --qrels" in result.output
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, ds in QRELS.items() for d in ds
    ))  # fmt: skip
    files = ["--queries", str(tmp_path / "queries.jsonl"), "--docs", str(docs), "--qrels", str(tmp_path / "qrels.tsv")]
    result = run(
        app, ["profile", "--score", "relevance", *files, "--candidates", "6", "--out", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0 and "fused with BM25 at weight" in result.output, result.output
    result = run(app, ["rank", "--query", QUERIES["q5"], "--docs", str(docs), "--heads", str(tmp_path / "r.json"),
                       "--fuse", "bm25"])  # fmt: skip
    assert result.exit_code == 0 and result.stdout.split()[2] == "rust", result.output
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tbees\tx\n")
    with pytest.raises(HeadwiseError, match=r"qrels\.tsv:2"):
        load_qrels(tmp_path / "qrels.tsv")
