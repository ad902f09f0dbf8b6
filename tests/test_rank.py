"""Attention re-ranking on the real model: the relevant document comes first, in two forward passes."""

import json

import pytest

from headwise.apps.rank import MIN_DOC_TOKENS, Doc, _pack, attention_scores, load_docs, rank
from headwise.core.shipped import shipped_headmap
from headwise.errors import HeadwiseError

DOCS = [
    Doc("bees", "Honey bees communicate the direction of flowers to their hive mates with a waggle dance."),
    Doc("volcano", "Mount Etna on Sicily is one of the most active volcanoes in the world and erupts often."),
    Doc("tea", "Green tea is made from leaves that are not withered and oxidized, unlike black tea."),
    Doc("insulin", "Insulin, made by beta cells of the pancreas, lowers blood glucose by helping cells absorb it."),
    Doc("chess", "In chess, castling moves the king two squares towards a rook, which jumps over the king."),
    Doc("rivers", "The Amazon carries more water to the sea than any other river on Earth."),
]


def test_the_relevant_document_ranks_first_in_two_passes(smol):
    model, tok = smol
    headmap = shipped_headmap("smollm2-135m")
    for query, gold in (
        ("Which organ produces the hormone that controls blood sugar?", "insulin"),
        ("How do bees tell each other where food is?", "bees"),
        ("Which river brings the most water to the ocean?", "rivers"),
    ):
        order = rank(model, tok, query, DOCS, headmap=headmap)
        assert order[0][0] == gold, order
        assert len(order) == len(DOCS)


def test_a_model_with_sliding_window_layers_ranks_documents_longer_than_its_window(gemma, book):
    model, tok, headmap = gemma
    prose = [Doc(f"prose{i}", book.text[4000 + 2500 * i : 4000 + 2500 * i + 1100]) for i in range(5)]
    docs = [*prose, DOCS[3]]  # ~1,400 tokens: both passes continue one prefill past the 512-token window
    order = rank(model, tok, "Which organ produces the hormone that controls blood sugar?", docs, headmap=headmap)
    assert order[0][0] == "insulin", order


def test_all_heads_rank_every_document_once_in_two_passes(smol):
    model, tok = smol
    order = rank(model, tok, "Where is Mount Etna?", DOCS)
    assert sorted(i for i, _ in order) == sorted(d.id for d in DOCS)
    _, passes, cap = attention_scores(model, tok, "Where is Mount Etna?", DOCS)
    assert passes == 2 and cap == 300


def test_many_documents_are_cut_to_share_the_window_then_split():
    groups, cap = _pack(20, 8000, 300)
    assert len(groups) == 1 and cap == 300
    groups, cap = _pack(40, 8000, 300)
    assert len(groups) == 1 and MIN_DOC_TOKENS <= cap < 300
    groups, cap = _pack(300, 8000, 300)
    assert len(groups) == 3 and sorted(i for g in groups for i in g) == list(range(300)) and cap >= MIN_DOC_TOKENS


def test_bad_documents_are_refused(tmp_path, smol):
    model, tok = smol
    cases = {
        "broken.jsonl": '{"id": 1, "text": "fine"}\n{"id": 2, "text": \n',
        "empty.jsonl": "\n\n",
        "notext.jsonl": json.dumps({"id": 1, "body": "x"}) + "\n",
        "blank.jsonl": json.dumps({"id": 1, "text": "  "}) + "\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(HeadwiseError):
            load_docs(tmp_path / name)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"_id": "d7", "title": "Bees", "text": "They dance."}) + "\n" + '{"text": "x"}\n')
    assert load_docs(good) == [Doc("d7", "Bees. They dance."), Doc("2", "x")]
    with pytest.raises(HeadwiseError, match="query is empty"):
        rank(model, tok, "  ", DOCS)
