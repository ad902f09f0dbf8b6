"""Copy-constrained decoding for the reader's answer step: the values an answer names must be copied.

A small model given the right passage still garbles what it copies: a uuid loses characters, a number becomes
another, a name is made up. `CopyFromSource` is a greedy `pick` that takes the most likely of the top `k` tokens
that keeps every value word of the answer (one holding a digit, a hyphen or underscore, or a capital that is not
a common sentence opener) a whole word of the source the model was prompted with, and gives no number or code
twice (a small model listing values repeats one instead of finding the next); glue words in lower case stay
free, so the model still phrases its answer. Letters-only words match regardless of case.
"""

from __future__ import annotations

import re

import torch
from transformers import PreTrainedTokenizerBase

WORD = re.compile(r"[\w\-–]+")
EDGE = r"[\w\-–]"
OPENERS = frozenset(
    "a an the this that these those there it its they their he she his her we our i you your yes no not none "
    "all both each some according in on at by for from of to with and or but as if so".split()
)  # capitalised at a sentence's start, they need no source


class CopyFromSource:
    """A `pick` for `core.generate`: the best of the `k` likeliest tokens whose text keeps the answer's value
    words copies of whole words in `source`; the plain argmax if none of them does."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, source: str, stops: set[int], k: int = 50) -> None:
        self.tokenizer, self.stops, self.k = tokenizer, stops, k
        self.source, self.lower = source, source.lower()
        self._words: dict[str, frozenset[str]] = {}

    def __call__(self, produced: list[int], logits: torch.Tensor) -> int:
        candidates = torch.topk(logits.float(), min(self.k, logits.shape[-1])).indices.tolist()
        before = self.tokenizer.decode(produced, skip_special_tokens=True)
        since = len(before.rstrip("\ufffd"))
        for token in candidates:
            ends = token in self.stops
            text = before if ends else self.tokenizer.decode([*produced, token], skip_special_tokens=True)
            if self.allows(text, ends, since):
                return token
        return candidates[0]

    def allows(self, text: str, ends: bool = False, since: int = 0) -> bool:
        """Whether every value word of `text` that reaches `since` (where the new token begins; the words before
        it were allowed, or taken when nothing was) is a word of the source, and no number or code is given
        twice; the last word, unless the answer `ends` there, need only begin such a word (it may still grow).
        A half-decoded character at the end counts as growing."""
        growing = not ends or text.endswith("\ufffd")
        text = text.rstrip("\ufffd")
        given: set[str] = set()
        for match in WORD.finditer(text):
            word, whole = match.group(), not (growing and match.end() == len(text))
            if self._is_free(word, whole):
                continue
            key = word.lower() if word.isalpha() else word
            if match.end() >= since:
                options = self._source_words(key) - given
                if not (key in options if whole else options):
                    return False
            if not word.isalpha():
                given.add(word)
        return True

    @staticmethod
    def _is_free(word: str, whole: bool) -> bool:
        """Glue the model may write freely: lower-case letters, or a capitalised common opener ("The", "Yes")."""
        if not word.isalpha():
            return False
        lower = word.lower()
        return word == lower or (lower in OPENERS if whole else any(o.startswith(lower) for o in OPENERS))

    def _source_words(self, start: str) -> frozenset[str]:
        """The source's words that begin with `start` (in lower case if `start` is letters only)."""
        if start not in self._words:
            pattern = rf"(?<!{EDGE}){re.escape(start)}{EDGE}*"
            self._words[start] = frozenset(re.findall(pattern, self.lower if start.isalpha() else self.source))
        return self._words[start]
