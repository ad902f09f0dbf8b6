"""Real-prose haystacks: shipped public-domain books or a user's text, cut to an exact token count."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headwise.core.text import clean_prose, tokenize_sentences
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOOKS = ("frankenstein", "pride-and-prejudice", "moby-dick")
DEFAULT_BOOK = "frankenstein"


@dataclass
class Haystack:
    """A prose source; `tokens()` gives its token ids and the token indices where sentences start."""

    name: str
    text: str
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def tokens(self, tokenizer: PreTrainedTokenizerBase) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the whole text and the sorted token indices that begin a sentence (cached)."""
        key = (tokenizer.name_or_path, len(tokenizer))
        if key not in self._cache:
            ids, _, bounds = tokenize_sentences(tokenizer, self.text)
            self._cache[key] = (ids, bounds)
        return self._cache[key]

    def cut(
        self,
        tokenizer: PreTrainedTokenizerBase,
        length: int,
        start: int,
        insert: np.ndarray | None = None,
        depth: float = 0.5,
    ) -> tuple[np.ndarray, int]:
        """`length` tokens of prose from sentence `start` (wrapping around), with `insert` placed at a
        sentence boundary at or before `depth` of the way in. Returns (ids, insert position)."""
        if insert is None:
            out, positions = self.cut_many(tokenizer, length, start, [np.zeros(0, dtype=np.int64)], [depth])
        else:
            out, positions = self.cut_many(tokenizer, length, start, [insert], [depth])
        return out, positions[0]

    def cut_many(
        self,
        tokenizer: PreTrainedTokenizerBase,
        length: int,
        start: int,
        inserts: list[np.ndarray],
        depths: list[float],
    ) -> tuple[np.ndarray, list[int]]:
        """`cut` with several inserts, each at a sentence boundary at or before its depth of the prose.
        Returns (ids, where each insert begins in them)."""
        ids, bounds = self.tokens(tokenizer)
        extra = sum(len(i) for i in inserts)
        body = length - extra
        if body < 0:
            raise HeadwiseError(f"a haystack of {length} tokens cannot hold needles of {extra} tokens")
        first = bounds[start % len(bounds)]
        take = (first + np.arange(body)) % len(ids)
        rel = np.sort((bounds - first) % len(ids))
        rel = rel[rel <= body]
        at = [int(rel[rel <= round(d * body)].max()) for d in depths]
        order = sorted(range(len(inserts)), key=lambda i: (at[i], i))
        out, pieces, positions, done = ids[take], [], [0] * len(inserts), 0
        for i in order:
            pieces.append(out[done : at[i]])
            positions[i] = sum(len(p) for p in pieces)
            pieces.append(inserts[i])
            done = at[i]
        pieces.append(out[done:])
        return np.concatenate(pieces), positions

    def num_sentences(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """How many sentence starts the text has in this tokenizer's ids."""
        return len(self.tokens(tokenizer)[1])


def load_haystack(name_or_path: str = DEFAULT_BOOK) -> Haystack:
    """A shipped book by name (frankenstein, pride-and-prejudice, moby-dick) or a UTF-8 text file."""
    if name_or_path in BOOKS:
        raw = resources.files("headwise.data.books").joinpath(f"{name_or_path}.txt").read_text("utf-8")
        return Haystack(name_or_path, clean_prose(raw))
    path = Path(name_or_path).expanduser()
    try:
        raw = path.read_text("utf-8")
    except FileNotFoundError:
        raise HeadwiseError(
            f"haystack {name_or_path!r} is neither a shipped book ({', '.join(BOOKS)}) nor an existing file"
        ) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise HeadwiseError(f"cannot read haystack file {path}: {exc}; give a UTF-8 text file") from None
    text = clean_prose(raw)
    if len(text) < 2000:
        raise HeadwiseError(
            f"haystack file {path} has too little prose ({len(text)} characters after cleaning); give a longer text"
        )
    return Haystack(path.stem, text)
