"""Reading beyond the window on the real model: the needle is kept across chunks and the answer is right."""

import numpy as np
import pytest

from headwise.errors import HeadwiseError
from headwise.headmap import shipped_headmap
from headwise.niah import run_niah
from headwise.rank import head_weights
from headwise.reader import (
    MAX_UNIT_TOKENS,
    Selection,
    answer_prompt,
    choose,
    evidence,
    load_text,
    make_units,
    needle_reader,
    read,
    split_chunks,
)
from headwise.tasks import Needle, make_multi_test


def test_units_cover_the_text_and_chunks_respect_their_size():
    starts = np.array([0, 5, 200, 230])
    for unit in ("sentence", "block", "token"):
        units = make_units(300, starts, unit)
        assert units[0, 0] == 0 and units[-1, 1] == 300
        assert (units[1:, 0] == units[:-1, 1]).all()
        assert (units[:, 1] - units[:, 0]).max() <= MAX_UNIT_TOKENS
    sentences = make_units(300, starts, "sentence")
    assert {5, 200, 230} <= set(sentences[:, 0].tolist())  # sentence starts are unit starts
    chunks = split_chunks(sentences, 100)
    assert np.concatenate(chunks).tolist() == list(range(len(sentences)))
    assert all(sentences[c[-1], 1] - sentences[c[0], 0] <= 100 for c in chunks)


def test_choose_fills_the_budget_best_first_and_evidence_merges_neighbours():
    picked = choose(np.array([0.1, 0.9, 0.5, 0.8]), np.array([10, 30, 10, 25]), budget=50)
    assert sorted(picked.tolist()) == [0, 1, 2]  # 30 + 10 + 10: the 25-token unit does not fit after the 30
    assert evidence(np.array([[0, 3], [3, 8], [9, 12], [20, 25]])) == [(0, 12), (20, 25)]


def test_answer_prompt_merges_neighbours_orders_by_score_and_drops_weak_passages(smol):
    _, tok = smol
    texts = [" A one.", " B two.", " C three.", " D four."]
    units = [np.asarray(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    starts = np.array([0, len(units[0]), 100, 200])  # units 0 and 1 are neighbours in the input
    chars = np.array([[0, 6], [6, 13], [300, 308], [600, 607]])
    selection = Selection([1], [2], units, starts, np.array([0.2, 0.1, 0.9, 0.05]), chars, 0, 0)

    def body(**options) -> str:
        prompt, _ = answer_prompt(selection, tok, **options)
        assert prompt[0] == 1 and prompt[-1] == 2
        return tok.decode(prompt[1:-1])

    assert body(focus=0.0) == " D four.\n A one. B two.\n C three."  # weakest first; A and B stay one passage
    assert body(focus=0.0, order="input", separator="") == " A one. B two. C three. D four."
    assert body(focus=0.0, merge=False, separator="|") == " D four.| B two.| A one.| C three."
    assert body(focus=0.2) == " A one. B two.\n C three."  # a passage scores its best unit: 0.2 >= 0.2 x 0.9
    assert answer_prompt(selection, tok, focus=0.2)[1].tolist() == [0, 1, 2]
    with pytest.raises(HeadwiseError, match="order"):
        answer_prompt(selection, tok, order="random")


def test_the_reader_keeps_the_needle_across_chunks_and_answers(smol, book):
    model, tok = smol
    needle = Needle("The ferryman's dog is named Biscuit.", "What is the name of the ferryman's dog?", "Biscuit")
    ids, _ = book.cut(tok, 3000, 40, np.asarray(tok(" " + needle.needle, add_special_tokens=False)["input_ids"]), 0.3)
    text = tok.decode(ids)
    answer = read(model, tok, text, needle.question, shipped_headmap("smollm2-135m"), chunk=512, keep=128)
    assert answer.chunks >= 5
    assert any(needle.needle in quote for quote in answer.quotes(text)), answer.quotes(text)
    assert "biscuit" in answer.text.lower(), answer.text
    assert sum(b - a for a, b in answer.evidence) < len(text) / 8  # it answered from a small part


def test_multi_needle_facts_are_all_kept_when_the_budget_allows(smol, book):
    model, tok = smol
    test = make_multi_test(tok, book, 4, 2500, start=7)
    assert len(test.facts) == 4 and all(f in tok.decode(test.ids) for f in test.facts)
    options = {"chunk": 512, "keep": 192, "focus": 0.0}  # focus 0: answer from every kept passage
    respond = needle_reader(model, tok, head_weights(model, shipped_headmap("smollm2-135m")), **options)
    result = run_niah(model, tok, [test], progress=False, respond=respond, reader=options)
    assert result.outcomes[0].kept_needle, result.outcomes[0]


def test_bad_reader_input_is_refused(smol, tmp_path):
    model, tok = smol
    with pytest.raises(HeadwiseError, match="empty"):
        read(model, tok, "  \n", "What?")
    with pytest.raises(HeadwiseError, match="question"):
        read(model, tok, "Some text.", " ")
    with pytest.raises(HeadwiseError, match="window"):
        read(model, tok, "Some text.", "What?", chunk=9000)
    with pytest.raises(HeadwiseError, match="unit"):
        read(model, tok, "Some text.", "What?", unit="paragraph")
    with pytest.raises(HeadwiseError, match="focus"):
        read(model, tok, "Some text.", "What?", focus=1.5)
    (tmp_path / "bin").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for name, message in (("bin", "binary"), ("empty.txt", "empty"), ("latin1.txt", "UTF-8"), ("none", "cannot read")):
        with pytest.raises(HeadwiseError, match=message):
            load_text(tmp_path / name)
