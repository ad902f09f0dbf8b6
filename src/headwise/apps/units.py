"""What the reader keeps, in token spans: units (sentences, long ones split; fixed blocks; or tokens), the
chunks it reads them in, a unit's score from its tokens' and the greedy choice of units within a budget."""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from headwise.apps.config import BLOCK_TOKENS, MAX_UNIT_TOKENS


def make_units(n: int, starts: np.ndarray, unit: str) -> np.ndarray:
    """(units, 2) token [start, end) spans covering 0..n: sentences (long ones split), fixed blocks or tokens."""
    if unit == "token":
        edges = np.arange(n + 1)
    elif unit == "block":
        edges = np.append(np.arange(0, n, BLOCK_TOKENS), n)
    else:
        bounds = np.unique(np.concatenate([[0], starts[starts < n], [n]]))
        pieces = [np.arange(a, b, MAX_UNIT_TOKENS) for a, b in pairwise(bounds)]
        edges = np.append(np.concatenate(pieces), n)
    return np.stack([edges[:-1], edges[1:]], axis=1)


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
