"""Text in: reading a user's file, finding the body of a Project Gutenberg book, and splitting text into
sentences aligned with a tokenizer's tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_PROSE_END = ".!?\"'”’)"
_GUTENBERG_START = re.compile(r"\*\*\* ?START OF TH(?:E|IS) PROJECT GUTENBERG[^\n]*\n")
_GUTENBERG_END = re.compile(r"\n\*\*\* ?END OF TH(?:E|IS) PROJECT GUTENBERG")
# A sentence starts after . ! or ? (optionally closed by quotes or brackets) and whitespace, at a capital or quote.
_SENTENCE_START = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"“‘'(]?[A-Z])")


def body_span(text: str) -> tuple[int, int]:
    """[start, end) characters of a text's body: within a Project Gutenberg book, what lies between its
    START and END markers (the header, licence and footer are left out); the whole text otherwise."""
    start = _GUTENBERG_START.search(text)
    if start is None:
        return 0, len(text)
    end = _GUTENBERG_END.search(text, start.end())
    return start.end(), end.start() if end else len(text)


def clean_prose(raw: str) -> str:
    """A book's body as paragraphs of prose: wrapped lines joined; short lines (headings, contents) dropped."""
    start, end = body_span(raw)
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", raw[start:end]))
    return "\n\n".join(p for p in paragraphs if len(p) >= 80 and p[-1] in _PROSE_END)


def tokenize_sentences(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, (start, end) character offsets per token, sorted token indices that begin a sentence)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    chars = np.asarray([0] + [m.end() for m in _SENTENCE_START.finditer(text)])
    # A sentence begins at the first token that reaches the whitespace before it (or its first letter).
    bounds = np.unique(np.searchsorted(offsets[:, 1], chars - 1, side="right"))
    return ids, offsets, bounds


def word_starts(text: str, offsets: np.ndarray) -> np.ndarray:
    """Sorted indices of the tokens that begin a word: the token opens with whitespace or follows it."""
    first = offsets[:, 0]
    opens = np.asarray([text[i : i + 1].isspace() or text[i - 1 : i].isspace() for i in first.tolist()], dtype=bool)
    return np.flatnonzero(opens & (first > 0))


def load_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; refuse missing, binary, undecodable or empty files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadwiseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in data[:65536]:
        raise HeadwiseError(f"{path} looks like a binary file; give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeadwiseError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it first") from None
    if not text.strip():
        raise HeadwiseError(f"{path} is empty")
    return text
