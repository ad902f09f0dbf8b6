"""Choosing relevance heads from labelled queries: BM25 candidates, calibrated attention tables per query (one
per reading, from one pair of passes), each head's own ranking quality, then the reading, how many heads to
read and the weight that fuses them with BM25, all chosen on the same labelled (training) queries.
`headwise profile --score relevance` runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.apps.rank import DEFAULT_READING, READINGS, Doc, Reading, attention_tables, fused, load_docs
from headwise.core.headmap import HeadMap
from headwise.core.models import model_id, model_shape
from headwise.errors import HeadwiseError
from headwise.eval.beir import bm25_candidates
from headwise.scores.relevance import ndcg_at_10, relevance_headmap

TOPS = (1, 2, 4, 8, 16, 32)  # head counts tried; which one is chosen on the labelled queries
WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))  # fusion weights tried (1: attention only)


@dataclass
class Table:
    """One labelled query: its candidates (ids, first-stage scores) and their attention per layer and head, for
    each reading."""

    ids: list[str]
    first_stage: np.ndarray
    masses: dict[Reading, np.ndarray]
    relevant: set[str]

    @property
    def marks(self) -> np.ndarray:
        """Which candidates are relevant."""
        return np.array([d in self.relevant for d in self.ids])


Scorer = Callable[[Table], np.ndarray]


def mean_ndcg(tables: list[Table], scorer: Scorer) -> float:
    """Mean nDCG@10 when `scorer` orders each query's candidates."""
    return float(
        np.mean([ndcg_at_10([t.ids[i] for i in np.argsort(-scorer(t), kind="stable")], t.relevant) for t in tables])
    )


def through(weights: np.ndarray, reading: Reading = DEFAULT_READING) -> Scorer:
    """Candidates scored by their attention (as `reading` reads it) through (layers, heads) `weights`."""
    return lambda t: np.einsum("lh,lhd->d", weights, t.masses[reading])


def fused_with_first_stage(scorer: Scorer, weight: float) -> Scorer:
    """`scorer` fused with the first-stage scores at `weight`."""
    return lambda t: fused(scorer(t), t.first_stage, weight)


def best_top(
    tables: list[Table], headmap: HeadMap, reading: Reading = DEFAULT_READING, tops: tuple[int, ...] = TOPS
) -> int:
    """The head count whose top heads rank `tables` best (the fewer on ties)."""
    return max(tops, key=lambda k: (mean_ndcg(tables, through(headmap.weights(k), reading)), -k))


def reading_maps(
    model: str, num_kv_heads: int, tables: list[Table], kind: str = "ndcg", about: dict | None = None
) -> dict[Reading, tuple[HeadMap, int, float]]:
    """Per reading: its relevance head map, the head count that ranks `tables` best through it, and that nDCG@10."""
    marks, totals = [t.marks for t in tables], [len(t.relevant) for t in tables]
    out = {}
    for reading in READINGS:
        hm = relevance_headmap(model, num_kv_heads, [t.masses[reading] for t in tables], marks, totals, kind, about)
        top = best_top(tables, hm, reading)
        out[reading] = (hm, top, mean_ndcg(tables, through(hm.weights(top), reading)))
    return out


def tuned_map(
    model: str, num_kv_heads: int, tables: list[Table], kind: str = "ndcg", about: dict | None = None
) -> HeadMap:
    """The relevance head map of the reading whose best head count ranks `tables` best (READINGS' order breaks
    ties), with that reading, count (`method["top"]`), its nDCG@10 and the fusion weight with the first stage
    (`method["fusion"]`) tuned on the same tables."""
    maps = reading_maps(model, num_kv_heads, tables, kind, about)
    reading = max(READINGS, key=lambda r: (maps[r][2], -READINGS.index(r)))
    hm, top, ndcg = maps[reading]
    hm.method |= {
        "reading": asdict(reading),
        "top": top,
        "ndcg@10": round(ndcg, 4),
        "fusion": {"with": "bm25", "weight": best_weight(tables, through(hm.weights(top), reading))},
    }
    return hm


def best_weight(tables: list[Table], scorer: Scorer) -> float:
    """The fusion weight with the best nDCG@10 on `tables` (the smaller on ties)."""
    return max(WEIGHTS, key=lambda w: (mean_ndcg(tables, fused_with_first_stage(scorer, w)), -w))


def load_queries(path: str | Path) -> dict[str, str]:
    """{id: text} from JSONL lines of {"_id" or "id", "text"}."""
    return {d.id: d.text for d in load_docs(path)}


def load_qrels(path: str | Path) -> dict[str, set[str]]:
    """Relevant document ids per query, in the file's order, from a TSV of query-id, doc-id, score (a header
    line is skipped; scores of 0 or less are not relevant)."""
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadwiseError(f"cannot read qrels {path}: {exc}") from None
    qrels: dict[str, set[str]] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if number == 1 and not parts[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise HeadwiseError(f"{path}:{number} is not 'query-id<TAB>doc-id<TAB>score'")
        if int(parts[2]) > 0:
            qrels.setdefault(parts[0], set()).add(parts[1])
    if not qrels:
        raise HeadwiseError(f"{path} holds no relevant (score > 0) pairs")
    return qrels


def collect(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: dict[str, Doc],
    queries: dict[str, str],
    qrels: dict[str, set[str]],
    candidates: int = 20,
    progress: bool = True,
) -> list[Table]:
    """Per query: BM25's top `candidates` over `corpus` and their calibrated attention tables (two passes)."""
    pool = bm25_candidates(corpus, queries, candidates)
    tables = []
    for q in tqdm(list(queries), desc="relevance", unit="query", disable=not progress):
        docs = [corpus[d] for d, _ in pool[q]]
        masses, _, _ = attention_tables(model, tokenizer, queries[q], docs)
        tables.append(Table([d.id for d in docs], np.array([s for _, s in pool[q]]), masses, qrels[q]))
    return tables


def profile_relevance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: dict[str, str],
    docs: list[Doc],
    qrels: dict[str, set[str]],
    limit: int | None = 400,
    candidates: int = 20,
    kind: str = "ndcg",
    progress: bool = True,
) -> HeadMap:
    """A relevance head map from labelled queries: the first `limit` query ids of `qrels` (in its order), BM25
    candidates from `docs`, each head's own nDCG@10 (or contrast), and, tuned on the same queries, the reading
    (`method["reading"]`), how many heads to read (`method["top"]`) and the weight fusing them with BM25
    (`method["fusion"]`)."""
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise HeadwiseError(f"{len(missing)} qrels query ids have no query text, e.g. {missing[0]!r}")
    corpus = {d.id: d for d in docs}
    chosen = list(qrels)[:limit]
    tables = collect(model, tokenizer, corpus, {q: queries[q] for q in chosen}, qrels, candidates, progress)
    about = {"data": f"the first {len(chosen)} query ids of the qrels", "candidates": f"BM25 top-{candidates}"}
    return tuned_map(model_id(model), model_shape(model).num_kv_heads, tables, kind, about)
