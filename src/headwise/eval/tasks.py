"""Building needle tests: needles (shipped, made up or passkeys) cut into real prose at exact depths."""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from headwise.core.needles import Needle, NeedleTest
from headwise.core.prompts import reading_prompt
from headwise.errors import HeadwiseError
from headwise.eval.grids import PROFILE_GRID, NeedleGrid, check_grid
from headwise.eval.haystack import Haystack, load_haystack

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_needles(path: str | Path | None = None) -> list[Needle]:
    """Shipped needles, or a JSON list of {"needle", "question", "answer"} objects from `path`."""
    try:
        raw = (
            resources.files("headwise.data").joinpath("needles.json").read_text("utf-8")
            if path is None
            else Path(path).read_text("utf-8")
        )
        needles = [Needle(d["needle"], d["question"], d["answer"]) for d in json.loads(raw)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HeadwiseError(
            f"cannot read needles from {path}: {exc}; expected a JSON list of objects with needle, question, answer"
        ) from None
    if not needles:
        raise HeadwiseError(f"no needles in {path}")
    return needles


def pick_needles(pool: list[Needle], count: int, held_out: bool = False) -> list[Needle]:
    """The first `count` needles (profiling), or the last `count` (`held_out`: ablation and NIAH default to
    needles the default profile never saw)."""
    if not 1 <= count <= len(pool):
        raise HeadwiseError(f"asked for {count} needles; choose between 1 and {len(pool)} (the needles available)")
    return pool[-count:] if held_out else pool[:count]


def passkey_needles(count: int, seed: int = 0) -> list[Needle]:
    """Passkey retrieval needles (Mohtashami and Jaggi 2023): a random 5-digit key to repeat back."""
    rng = random.Random(seed)
    keys = [str(rng.randrange(10000, 100000)) for _ in range(count)]
    return [Needle(f"The pass key is {k}. Remember it. {k} is the pass key.", "What is the pass key?", k) for k in keys]


MULTI_OWNERS = ("Captain Ward", "Aunt Miriam", "the miller Osric", "Doctor Penhallow", "the widow Tamsin", "old Elias")


NAME_THINGS = ("boat", "horse", "house", "dog", "clock", "carriage", "mill", "ring")


NAME_SECOND_WORDS = ("Lantern", "Meadow", "Harbour", "Thistle", "Anchor", "Sparrow", "Crown", "Willow")


def made_up_name(rng: random.Random) -> str:
    """A pronounceable word of three random syllables ("Dovelmarin"): no tokenizer has it as one token, so
    repeating it back means copying several subword tokens from the context, as rare names need."""
    syllables = [
        rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") + rng.choice(["", "", "l", "n", "r", "s"]) for _ in range(3)
    ]
    return "".join(syllables).capitalize()


def name_needles(count: int, seed: int = 0, words: int = 1) -> list[Needle]:
    """Needles whose answer is a made-up name ("Doctor Penhallow's clock is called Vesmarol."), so that the
    answer is copied token by token from the context rather than recalled as a familiar word. With
    `words=2` the name goes on with a common word ("Vesmarol Lantern"), which must be copied too, not guessed."""
    if words not in (1, 2):
        raise HeadwiseError(f"a made-up name has 1 or 2 words, not {words}")
    rng = random.Random(seed)
    needles = []
    for _ in range(count):
        owner, thing, name = rng.choice(MULTI_OWNERS), rng.choice(NAME_THINGS), made_up_name(rng)
        if words == 2:
            name += " " + rng.choice(NAME_SECOND_WORDS)
        owner_s = owner[0].upper() + owner[1:]
        needles.append(Needle(f"{owner_s}'s {thing} is called {name}.", f"What is {owner}'s {thing} called?", name))
    return needles


CODE_THINGS = ("locker", "safe", "vault", "ledger", "cabin", "crate", "account", "archive")


def code_needles(count: int, seed: int = 0) -> list[Needle]:
    """Needles whose answer is a long random value (a 7-digit number or two 4-character hex groups, as
    RULER's numbers and uuids), copied token by token: the copying that short word answers never test."""
    rng = random.Random(seed)
    needles = []
    for i in range(count):
        owner, thing = rng.choice(MULTI_OWNERS), rng.choice(CODE_THINGS)
        if i % 2 == 0:
            code = str(rng.randrange(1_000_000, 10_000_000))
        else:
            code = "-".join("".join(rng.choice("0123456789abcdef") for _ in range(4)) for _ in range(2))
        question = f"What is the code of {owner}'s {thing}?"
        needles.append(Needle(f"The code of {owner}'s {thing} is {code}.", question, code))
    return needles


def multi_needle(count: int = 4, seed: int = 0) -> tuple[Needle, list[str]]:
    """A multi-value needle (as in RULER): `count` facts "One of the lucky numbers of X is N." hidden apart,
    and one question whose answer needs every N. Returns (the question and joined answer, the facts)."""
    rng = random.Random(seed)
    owner = rng.choice(MULTI_OWNERS)
    values = [str(v) for v in rng.sample(range(1000, 10000), count)]
    facts = [f"One of the lucky numbers of {owner} is {v}." for v in values]
    return Needle(" ".join(facts), f"What are the lucky numbers of {owner}?", " ".join(values)), facts


def make_multi_test(
    tokenizer: PreTrainedTokenizerBase,
    haystack: Haystack,
    count: int,
    length: int,
    start: int,
    seed: int = 0,
) -> NeedleTest:
    """`length` tokens of prose with the facts of `multi_needle(count, seed)` spread evenly through it;
    `depth` records the first fact's depth and `span` its tokens."""
    needle, facts = multi_needle(count, seed)
    prefix, suffix = reading_prompt(tokenizer, needle.question)
    inserts = [np.asarray(tokenizer(" " + f, add_special_tokens=False)["input_ids"]) for f in facts]
    depths = [(i + 0.5) / count for i in range(count)]
    context, positions = haystack.cut_many(tokenizer, length, start, inserts, depths)
    ids = torch.tensor(np.concatenate([prefix, context, suffix]), dtype=torch.long)
    begin = len(prefix) + positions[0]
    span = (begin, begin + len(inserts[0]))
    return NeedleTest(ids, span, needle, length, depths[0], haystack.name, tuple(facts))


def make_test(
    tokenizer: PreTrainedTokenizerBase, haystack: Haystack, needle: Needle, length: int, depth: float, start: int
) -> NeedleTest:
    """A prompt whose context is exactly `length` tokens of prose with the needle at `depth` (0 = start, 1 = end)."""
    prefix, suffix = reading_prompt(tokenizer, needle.question)
    needle_ids = np.asarray(tokenizer(" " + needle.needle, add_special_tokens=False)["input_ids"])
    context, pos = haystack.cut(tokenizer, length, start, needle_ids, depth)
    ids = torch.tensor(np.concatenate([prefix, context, suffix]), dtype=torch.long)
    begin = len(prefix) + pos
    return NeedleTest(ids, (begin, begin + len(needle_ids)), needle, length, depth, haystack.name)


def context_text(tokenizer: PreTrainedTokenizerBase, test: NeedleTest) -> str:
    """The test's prose with its needle(s), decoded without the prompt around it: what a reader is given."""
    prefix, suffix = reading_prompt(tokenizer, test.needle.question)
    return tokenizer.decode(test.ids[len(prefix) : len(test.ids) - len(suffix)])


def make_tests(
    tokenizer: PreTrainedTokenizerBase,
    haystack: Haystack,
    needles: list[Needle],
    lengths: list[int],
    depths: list[float],
    seed: int = 0,
) -> list[NeedleTest]:
    """Every (needle, length, depth) combination; each test's prose starts at its own random sentence."""
    if not needles:
        raise HeadwiseError("needle tests need at least one needle")
    check_grid(lengths, depths)
    rng = random.Random(seed)
    sentences = haystack.num_sentences(tokenizer)
    return [
        make_test(tokenizer, haystack, needle, length, depth, rng.randrange(sentences))
        for needle in needles
        for length in lengths
        for depth in depths
    ]


def needle_tests(
    tokenizer: PreTrainedTokenizerBase,
    grid: NeedleGrid = PROFILE_GRID,
    needles: list[Needle] | None = None,
    haystack: Haystack | None = None,
) -> list[NeedleTest]:
    """The tests of `grid`, its needles taken from `needles` (default: the shipped ones; the first, or the last
    with `grid.held_out`), cut into `haystack` (default: the book the grid names)."""
    chosen = pick_needles(load_needles() if needles is None else needles, grid.needles, grid.held_out)
    prose = load_haystack(grid.haystack) if haystack is None else haystack
    return make_tests(tokenizer, prose, chosen, list(grid.lengths), list(grid.depths), grid.seed)
