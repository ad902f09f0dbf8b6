"""BM25, the first stage attention re-ranking starts from and fuses with: bm25s with English stop words and
Snowball stems (the `bench` extra: pip install 'headwise[bench]')."""

from __future__ import annotations

import numpy as np

from headwise.errors import HeadwiseError


def _bm25s():
    """bm25s and its stemmer, or a clear error."""
    try:
        import bm25s
        import Stemmer
    except ImportError:
        raise HeadwiseError("BM25 needs bm25s and PyStemmer: pip install 'headwise[bench]'") from None
    return bm25s, Stemmer.Stemmer("english")


def bm25_top(texts: list[str], queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each queries x k: the `k` best of `texts` for each query, best first."""
    bm25s, stemmer = _bm25s()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    return retriever.retrieve(tokens, k=min(k, len(texts)), show_progress=False)


def bm25_scores(query: str, texts: list[str]) -> np.ndarray:
    """The BM25 score of each text for `query`, the texts being the whole collection."""
    index, scores = bm25_top(texts, [query], len(texts))
    out = np.zeros(len(texts))
    out[index[0]] = scores[0]
    return out
