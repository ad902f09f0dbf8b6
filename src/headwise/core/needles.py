"""Needle tests as data, shared by every layer: a fact hidden in a prompt, the question that asks for it,
the prompt's token ids with the fact's exact span, and how an answer is scored."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Needle:
    """A fact to hide (`needle`), the question that asks for it and the answer words that must come back."""

    needle: str
    question: str
    answer: str


@dataclass
class NeedleTest:
    """One prompt: token ids, the needle's [start, end) span in them, and where it sits."""

    ids: torch.Tensor
    span: tuple[int, int]
    needle: Needle
    length: int
    depth: float
    haystack: str
    facts: tuple[str, ...] = ()  # multi-needle tests: the sentences hidden at several depths

    @property
    def needle_ids(self) -> torch.Tensor:
        """The needle's token ids as they appear in the prompt."""
        return self.ids[self.span[0] : self.span[1]]


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words, the unit ROUGE-1 counts."""
    return re.findall(r"[a-z0-9]+", text.lower())


def rouge1_recall(reference: str, response: str) -> float:
    """Share of the reference's words (with multiplicity) that the response contains."""
    ref, got = words(reference), words(response)
    if not ref:
        return 0.0
    remaining = {w: got.count(w) for w in set(got)}
    hits = 0
    for w in ref:
        if remaining.get(w, 0) > 0:
            remaining[w] -= 1
            hits += 1
    return hits / len(ref)


def is_correct(needle: Needle, response: str) -> bool:
    """A response is right when it recalls more than half of the answer's words (ROUGE-1 recall > 0.5)."""
    return rouge1_recall(needle.answer, response) > 0.5
