"""Haystacks and needle tests: exact lengths, needles at sentence boundaries, a scorer that is strict enough."""

import pytest

from headwise.core.needles import Needle, is_correct, rouge1_recall
from headwise.core.prompts import reading_prompt
from headwise.errors import HeadwiseError
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import (
    code_needles,
    context_text,
    load_needles,
    make_multi_test,
    make_tests,
    name_needles,
    passkey_needles,
    pick_needles,
)


def test_context_is_exact_in_tokens_and_needle_sits_at_a_sentence_boundary(smol, book):
    _, tok = smol
    needles = load_needles()[:3]
    tests = make_tests(tok, book, needles, [300, 700], [0.0, 0.5, 1.0], seed=3)
    for t in tests:
        prefix, suffix = reading_prompt(tok, t.needle.question)
        assert len(t.ids) == len(prefix) + t.length + len(suffix)
        assert t.needle_ids.tolist() == tok(" " + t.needle.needle, add_special_tokens=False)["input_ids"]
        if t.span[0] > len(prefix):
            before = tok.decode(t.ids[len(prefix) : t.span[0]]).rstrip()
            assert before[-1] in ".!?\"'”’)", before[-40:]
    deep = [t.span[0] for t in tests if t.needle == needles[0] and t.length == 700]
    assert deep[0] < deep[1] < deep[2]


def test_depth_is_close_to_the_requested_fraction(smol, book):
    _, tok = smol
    [t] = make_tests(tok, book, load_needles()[:1], [2000], [0.5])
    start = make_tests(tok, book, load_needles()[:1], [2000], [0.0])[0].span[0]
    offset = (t.span[0] - start) / (2000 - len(t.needle_ids))
    assert 0.4 < offset <= 0.5


def test_scorer_wants_more_than_half_the_answer():
    n = Needle("x", "q", "Silver Albatross")
    assert is_correct(n, "It was called the Silver Albatross.")
    assert not is_correct(n, "The Silver Swan.")
    assert rouge1_recall("a b", "b") == 0.5
    assert not is_correct(Needle("x", "q", "37"), "She planted 73 trees.")


def test_multi_needle_facts_are_spread_in_order_at_exact_length(smol, book):
    _, tok = smol
    test = make_multi_test(tok, book, 4, 2000, start=5, seed=1)
    prefix, suffix = reading_prompt(tok, test.needle.question)
    assert len(test.ids) == len(prefix) + 2000 + len(suffix)
    context = context_text(tok, test)
    places = [context.find(f) for f in test.facts]
    assert all(p >= 0 for p in places) and places == sorted(places)
    assert places[0] < len(context) / 4 < places[1] < len(context) / 2 < places[2] < 3 * len(context) / 4 < places[3]
    assert is_correct(test.needle, "They are " + ", ".join(test.needle.answer.split()) + ".")
    assert not is_correct(test.needle, " ".join(test.needle.answer.split()[:2]))  # two of four values is not enough


def test_passkeys_are_deterministic_and_distinct():
    a, b = passkey_needles(5, seed=1), passkey_needles(5, seed=1)
    assert a == b and len({n.answer for n in a}) == 5
    assert all(n.answer in n.needle for n in a)


def test_made_up_names_are_copied_as_several_tokens(smol):
    _, tok = smol
    needles = name_needles(8, seed=3)
    assert needles == name_needles(8, seed=3) and len({n.answer for n in needles}) == 8
    for n in needles:
        assert n.needle.endswith(f" {n.answer}.") and n.answer not in n.question
        assert len(tok(" " + n.answer, add_special_tokens=False)["input_ids"]) >= 2  # a copy, not one familiar token
    phrases = name_needles(8, seed=3, words=2)
    assert all(len(n.answer.split()) == 2 and n.needle.endswith(f" {n.answer}.") for n in phrases)
    assert all(n.answer.split()[0] not in n.question for n in phrases)
    with pytest.raises(HeadwiseError, match="1 or 2 words"):
        name_needles(1, words=3)


def test_code_needles_are_long_values_copied_token_by_token(smol):
    _, tok = smol
    needles = code_needles(6, seed=2)
    assert needles == code_needles(6, seed=2) and len({n.answer for n in needles}) == 6
    for n in needles:
        assert n.needle.endswith(f" {n.answer}.") and n.answer not in n.question
        assert len(tok(" " + n.answer, add_special_tokens=False)["input_ids"]) >= 5  # RULER-like: many tokens
    assert any(n.answer.isdigit() for n in needles) and any("-" in n.answer for n in needles)
    assert not is_correct(needles[1], needles[1].answer.split("-")[0])  # half a code is wrong


def test_bad_inputs_are_refused(tmp_path, smol, book):
    _, tok = smol
    with pytest.raises(HeadwiseError, match="neither a shipped book"):
        load_haystack(str(tmp_path / "missing.txt"))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 50)
    with pytest.raises(HeadwiseError, match="cannot read haystack"):
        load_haystack(str(binary))
    bad = tmp_path / "needles.json"
    bad.write_text('[{"needle": "x"}]')
    with pytest.raises(HeadwiseError, match="needle, question, answer"):
        load_needles(bad)
    with pytest.raises(HeadwiseError, match="choose between 1 and"):
        pick_needles(load_needles(), 999)
    with pytest.raises(HeadwiseError, match="outside"):
        make_tests(tok, book, load_needles()[:1], [500], [1.5])
