"""What the reader keeps, in token spans: units (sentences, long ones split; fixed blocks; or tokens), the
chunks it reads them in, a unit's score from its tokens' and the greedy choice of units within a budget."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from headwise.apps.config import BLOCK_TOKENS, MAX_UNIT_TOKENS


def make_units(n: int, starts: np.ndarray, unit: str, breaks: np.ndarray | None = None) -> np.ndarray:
    """(units, 2) token [start, end) spans covering 0..n: sentences, fixed blocks or tokens. A sentence longer
    than MAX_UNIT_TOKENS is split at `breaks` (tokens that begin a word) where it can be, so that a long code
    such as a uuid stays whole in one unit; without `breaks`, or inside a longer word, every MAX_UNIT_TOKENS."""
    if unit == "token":
        edges = np.arange(n + 1)
    elif unit == "block":
        edges = np.append(np.arange(0, n, BLOCK_TOKENS), n)
    else:
        bounds = np.unique(np.concatenate([[0], starts[starts < n], [n]]))
        breaks = np.arange(n) if breaks is None else np.asarray(breaks)
        edges = np.append(np.concatenate([_split(a, b, breaks) for a, b in pairwise(bounds)]), n)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def _split(begin: int, end: int, breaks: np.ndarray) -> list[int]:
    """Starts of the pieces of the sentence [begin, end): each at most MAX_UNIT_TOKENS long and ending at the
    last break that keeps it so."""
    cuts = [begin]
    while end - cuts[-1] > MAX_UNIT_TOKENS:
        limit = cuts[-1] + MAX_UNIT_TOKENS
        inside = breaks[(breaks > cuts[-1]) & (breaks <= limit)]
        cuts.append(int(inside[-1]) if len(inside) else limit)
    return cuts


def split_chunks(units: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Consecutive runs of unit indices holding at most `chunk` tokens each (units are at most `chunk` long)."""
    cuts, begin = [], units[0, 0]
    for i, (start, end) in enumerate(units.tolist()):
        if end - begin > chunk:
            cuts.append(i)
            begin = start
    return np.split(np.arange(len(units)), cuts)


def pooled(per_token: np.ndarray, lengths: np.ndarray, pool: str) -> np.ndarray:
    """One score per unit from its tokens' scores (units are consecutive runs of `lengths` tokens)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if pool == "max":
        return np.maximum.reduceat(per_token, starts)
    total = np.add.reduceat(per_token, starts)
    return total / lengths if pool == "mean" else total


def choose(scores: np.ndarray, lengths: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the best-scoring units whose lengths fit in `budget` tokens (greedy, best first)."""
    picked, used = [], 0
    for i in np.argsort(-scores, kind="stable"):
        if used + lengths[i] <= budget:
            picked.append(i)
            used += lengths[i]
    return np.asarray(picked, dtype=np.int64)
