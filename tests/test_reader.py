"""Reading beyond the window on the real model: the needle is kept across chunks and the answer is right."""

import numpy as np
import pytest
import torch

from headwise.apps.config import MAX_UNIT_TOKENS, ReaderConfig
from headwise.apps.copying import CopyFromSource
from headwise.apps.reader import Answer, Passage, Selection, answer_prompt, read, with_sentence_neighbours
from headwise.apps.units import choose, make_units, split_chunks
from headwise.core.needles import Needle
from headwise.core.shipped import shipped_headmap
from headwise.core.text import load_text
from headwise.errors import HeadwiseError
from headwise.eval.niah import run_niah
from headwise.eval.tasks import make_multi_test


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


def test_a_long_sentence_splits_between_words_so_a_long_code_stays_whole_and_its_neighbours_come_along():
    # one 100-token sentence whose words begin at 0, 10, 20, 30 and 42 (a 40-token code) and 82, 90
    breaks = np.array([10, 20, 30, 42, 82, 90])
    units = make_units(100, np.array([0]), "sentence", breaks)
    assert units.tolist() == [[0, 42], [42, 90], [90, 100]]  # each piece ends at its last word start
    assert (units[:, 1] - units[:, 0]).max() <= MAX_UNIT_TOKENS
    glued = make_units(100, np.array([0]), "sentence", np.array([70]))  # a word longer than a unit is cut
    assert glued.tolist() == [[0, 48], [48, 70], [70, 100]]
    # a kept piece brings the pieces beside it in its sentence, never a neighbouring sentence's
    pieces = np.array([[0, 5], [5, 53], [53, 80], [80, 90]])
    assert with_sentence_neighbours(np.array([1]), pieces, np.array([0, 5, 80])).tolist() == [1, 2]
    assert with_sentence_neighbours(np.array([2]), pieces, np.array([0, 5, 80])).tolist() == [1, 2]
    assert with_sentence_neighbours(np.array([0, 3]), pieces, np.array([0, 5, 80])).tolist() == [0, 3]


def test_choose_fills_the_budget_best_first_and_evidence_merges_neighbours():
    picked = choose(np.array([0.1, 0.9, 0.5, 0.8]), np.array([10, 30, 10, 25]), budget=50)
    assert sorted(picked.tolist()) == [0, 1, 2]  # 30 + 10 + 10: the 25-token unit does not fit after the 30
    passages = [
        Passage(20, 25, 1.0, True),
        Passage(0, 3, 0.5, True),
        Passage(3, 8, 0.4, True),
        Passage(9, 12, 0.2, True),
    ]
    answer = Answer("", [*passages, Passage(30, 40, 0.1, False)], 0, 0, 0.0)
    assert answer.evidence == [(0, 12), (20, 25)]  # given passages in input order, neighbours merged
    source = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    assert answer.quotes(source, 2) == ["uvwxy", "abc"]  # best first
    assert answer.quotes(source, given_only=False)[-1] == source[30:40]


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
    answer = read(model, tok, text, needle.question, shipped_headmap("smollm2-135m"), ReaderConfig(chunk=512, keep=128))
    assert answer.chunks >= 5
    assert needle.needle in answer.quotes(text, 1)[0], answer.quotes(text)  # the best passage holds it
    assert answer.passages[0].score == 1.0 and all(p.score <= 1.0 for p in answer.passages)
    assert "biscuit" in answer.text.lower(), answer.text
    assert sum(b - a for a, b in answer.evidence) < len(text) / 8  # it answered from a small part


def test_multi_needle_facts_are_all_kept_when_the_budget_allows(smol, book):
    model, tok = smol
    test = make_multi_test(tok, book, 4, 2500, start=7)
    assert len(test.facts) == 4 and all(f in tok.decode(test.ids) for f in test.facts)
    config = ReaderConfig(chunk=512, keep=192, focus=0.0)  # focus 0: answer from every kept passage
    result = run_niah(model, tok, [test], headmap=shipped_headmap("smollm2-135m"), reader=config, progress=False)
    assert result.outcomes[0].kept_needle, result.outcomes[0]
    assert result.settings["method"] == "reader-sentence" and result.settings["reader"]["keep"] == 192


def test_bad_reader_input_is_refused(smol, tmp_path):
    model, tok = smol
    with pytest.raises(HeadwiseError, match="empty"):
        read(model, tok, "  \n", "What?")
    with pytest.raises(HeadwiseError, match="question"):
        read(model, tok, "Some text.", " ")
    with pytest.raises(HeadwiseError, match="window"):
        read(model, tok, "Some text.", "What?", config=ReaderConfig(chunk=9000))
    with pytest.raises(HeadwiseError, match="unit"):
        ReaderConfig(unit="paragraph")
    with pytest.raises(HeadwiseError, match="focus"):
        ReaderConfig(focus=1.5)
    (tmp_path / "bin").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for name, message in (("bin", "binary"), ("empty.txt", "empty"), ("latin1.txt", "UTF-8"), ("none", "cannot read")):
        with pytest.raises(HeadwiseError, match=message):
            load_text(tmp_path / name)


def test_the_reader_skips_a_gutenberg_header_and_licence(smol, book):
    """With the START/END markers of a Project Gutenberg file around it, only the body is read: no passage
    comes from the header or the licence, however much they mention the question's words."""
    model, tok = smol
    needle = Needle(
        "The lighthouse keeper's cat is called Marmalade.", "What is the lighthouse keeper's cat called?", "Marmalade"
    )
    ids, _ = book.cut(tok, 1500, 90, np.asarray(tok(" " + needle.needle, add_special_tokens=False)["input_ids"]), 0.6)
    header = "The Project Gutenberg eBook of cats. The keeper's cat is called Tom in this licence.\n"
    licence = "\n*** END OF THE PROJECT GUTENBERG EBOOK CATS ***\nThe lighthouse keeper's cat licence terms.\n"
    text = header + "*** START OF THE PROJECT GUTENBERG EBOOK CATS ***\n" + tok.decode(ids) + licence
    body = (text.index("*** START"), text.index("\n*** END"))
    answer = read(model, tok, text, needle.question, shipped_headmap("smollm2-135m"), ReaderConfig(chunk=512, keep=128))
    assert all(body[0] < p.start and p.end <= body[1] for p in answer.passages)
    assert needle.needle in " ".join(answer.quotes(text)), answer.quotes(text)
    assert "marmalade" in answer.text.lower(), answer.text


def test_copying_keeps_an_answers_values_whole_words_of_the_source(smol):
    _, tok = smol
    source = "The code for gentle-river is d37ee915-31de-44f4-9f2a-8b79fc8e80b3. Add 75–100 grams of flour."
    copy = CopyFromSource(tok, source, {tok.eos_token_id})
    assert copy.allows("The code is d37ee915-31de-44f4-9f2a-8b79fc8e80b3.", ends=True)
    assert copy.allows("Yes, about 75–100 grams", ends=True)  # glue words and sentence openers are free
    assert copy.allows("d37ee915-31", ends=False)  # a value still growing need only begin a word of the source
    assert not copy.allows("d37ee915-31", ends=True)  # ...and must end as one
    assert not copy.allows("75–100 and 75–100", ends=True)  # a value given twice in place of the next
    for garbled in ("37e915f2", "d37ee915-9f2a", "10 grams", "Pebble"):  # dropped characters, made-up values
        assert not copy.allows(garbled), garbled
    ids = tok.encode(" d37ee915", add_special_tokens=False)
    logits = torch.zeros(len(tok))
    logits[tok.encode("f", add_special_tokens=False)[0]] = 5.0  # the model would drop a character...
    logits[ids[2]] = 4.0
    assert copy(ids[:2], logits) == ids[2]  # ...the pick continues the source's uuid instead
    logits[tok.encode(" grams", add_special_tokens=False)[0]] = 9.0
    assert copy(tok.encode(" 75–100", add_special_tokens=False), logits) == int(logits.argmax())  # free words stay
    looping = " 75–100, 75–100,"  # a repeat taken when no candidate qualified...
    assert copy.allows(looping + " d37ee915", since=len(looping))  # ...is not held against later tokens
    assert not copy.allows(looping + " 10 grams", since=len(looping))  # which are still checked


def test_the_reader_copies_a_long_code_exactly(smol, book):
    model, tok = smol
    code = "x7q2-ghv9-b41k-0zzp"
    needle = Needle(f"The vault's access code is {code}.", "What is the vault's access code?", code)
    ids, _ = book.cut(tok, 2500, 40, np.asarray(tok(" " + needle.needle, add_special_tokens=False)["input_ids"]), 0.6)
    text = tok.decode(ids)
    config = ReaderConfig(chunk=512, keep=128)
    answer = read(model, tok, text, needle.question, shipped_headmap("smollm2-135m"), config, progress=False)
    assert code in answer.text, answer.text
    evidence = " ".join(text[a:b] for a, b in answer.evidence)
    assert CopyFromSource(tok, evidence + " " + needle.question, set()).allows(answer.text, ends=True), answer.text
