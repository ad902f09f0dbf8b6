"""Relevance heads: each head scored by how well it ranks documents on its own (QRHead, Zhang et al. 2025),
from labelled queries, so that re-ranking reads the heads that judge relevance rather than the heads that
copy a needle. Works on the calibrated attention tables `apps.rank.attention_scores` returns (one per
query: layers x heads x documents); `contrastive` scores a head by the attention it pays relevant minus
other documents instead (CoRe heads, 2025)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headwise.core.headmap import HeadMap
from headwise.errors import HeadwiseError

KINDS = ("ndcg", "contrastive")
DISCOUNT = 1 / np.log2(np.arange(2, 12))  # nDCG@10's position discounts


def ndcg_at_10(ranked: Sequence[str], relevant: set[str]) -> float:
    """Binary-relevance nDCG@10 of a ranked list of ids."""
    gain = sum(DISCOUNT[i] for i, d in enumerate(ranked[:10]) if d in relevant)
    return float(gain / DISCOUNT[: min(10, len(relevant))].sum()) if relevant else 0.0


def head_ndcg(masses: Sequence[np.ndarray], relevant: Sequence[np.ndarray], totals: Sequence[int]) -> np.ndarray:
    """(layers, heads): each head's mean nDCG@10 when its attention alone ranks each query's documents.
    `relevant[q]` marks query q's relevant documents among its candidates, `totals[q]` counts all of them."""
    out = np.zeros(masses[0].shape[:2])
    for mass, rel, total in zip(masses, relevant, totals, strict=True):
        top = np.argsort(-mass, axis=-1, kind="stable")[..., :10]
        out += (rel[top] * DISCOUNT[: top.shape[-1]]).sum(-1) / DISCOUNT[: min(10, total)].sum()
    return out / len(masses)


def head_contrast(masses: Sequence[np.ndarray], relevant: Sequence[np.ndarray]) -> np.ndarray:
    """(layers, heads): mean attention on relevant minus on other candidates, over queries that have both."""
    pairs = [(m, r) for m, r in zip(masses, relevant, strict=True) if r.any() and not r.all()]
    if not pairs:
        raise HeadwiseError("contrastive scoring needs queries with both relevant and other candidates")
    return np.mean([m[..., r].mean(-1) - m[..., ~r].mean(-1) for m, r in pairs], axis=0)


def relevance_headmap(
    model: str,
    num_kv_heads: int,
    masses: Sequence[np.ndarray],
    relevant: Sequence[np.ndarray],
    totals: Sequence[int],
    kind: str = "ndcg",
    about: dict | None = None,
) -> HeadMap:
    """A head map of kind "relevance": per head, its own nDCG@10 (or its contrast, `kind="contrastive"`) on
    the labelled queries; `about` (the data used, how candidates were found) is kept in its method."""
    if kind not in KINDS:
        raise HeadwiseError(f"relevance scoring is one of {', '.join(KINDS)}, got {kind!r}")
    if not masses:
        raise HeadwiseError("relevance heads need labelled queries; none were given")
    useful = [i for i, r in enumerate(relevant) if r.any()]
    if not useful:
        raise HeadwiseError("no query has a relevant document among its candidates; check the qrels and ids")
    masses, relevant, totals = [masses[i] for i in useful], [relevant[i] for i in useful], [totals[i] for i in useful]
    scores = head_ndcg(masses, relevant, totals) if kind == "ndcg" else head_contrast(masses, relevant)
    # a head whose attention was never read (a sliding-window layer, whose keys are a recent suffix) scores 0:
    # its all-zero scores would otherwise "rank" in the candidates' own order and copy the first stage's nDCG
    scores[~np.any([np.any(m != 0, axis=-1) for m in masses], axis=0)] = 0.0
    method = {"score": f"relevance ({kind}): each head ranking alone", "queries": len(useful), **(about or {})}
    return HeadMap(model, scores, num_kv_heads, kind="relevance", method=method)
