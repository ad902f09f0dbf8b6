"""Benchmark for issue #5: attention re-ranking (ICR) of BM25 candidates on BEIR SciFact.

    python bench/rank_scifact.py --data ../shared/data/ir/scifact --model smollm2-135m

The data is read from the path given (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv) and
is not shipped: SciFact's corpus is under non-commercial terms (see that folder's README). BM25
(`bm25s`, English stop words and Snowball stemmer) indexes the whole corpus; its top candidates are
re-ranked by ICR from one pair of forward passes per query, read through every head and through the
retrieval heads of the shipped head map. Writes bench/results/<model>/rank_scifact.json, .md, .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from tqdm import tqdm

from headwise.headmap import shipped_headmap
from headwise.models import load_model
from headwise.rank import Doc, attention_scores, head_weights

LATENCY_SIZES = (10, 20, 40)


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    """Binary-relevance nDCG@10."""
    gain = sum(1 / np.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / np.log2(i + 2) for i in range(min(10, len(relevant))))
    return gain / ideal


def load_scifact(data: Path, split: str) -> tuple[dict[str, Doc], dict[str, str], dict[str, set[str]]]:
    """(corpus by id, queries of the split by id, relevant doc ids per query)."""
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


def main() -> None:
    """BM25 candidates, ICR re-ranking with several head choices, nDCG@10, latency vs N; save all."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--split", default="test")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--limit", type=int, help="only the first N queries (for a quick look)")
    parser.add_argument("--latency-queries", type=int, default=10)
    args = parser.parse_args()
    corpus, queries, qrels = load_scifact(args.data, args.split)
    qids = sorted(queries, key=int)[: args.limit]
    ids = list(corpus)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([corpus[i].text for i in ids], stopwords="en", stemmer=stemmer, show_progress=False))
    hits, _ = retriever.retrieve(
        bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False),
        k=max(args.candidates, *LATENCY_SIZES),
        show_progress=False,
    )
    candidates = {q: [ids[j] for j in row] for q, row in zip(qids, hits, strict=True)}

    model, tok = load_model(args.model, args.dtype)
    headmap = shipped_headmap(args.model)
    choices = {
        "ICR, all heads": head_weights(model, None),
        "ICR, retrieval heads (top 5%)": head_weights(model, headmap, "5%"),
        "ICR, retrieval heads (top 10%)": head_weights(model, headmap, "10%"),
        "ICR, weighted by retrieval score": headmap.scores,
    }
    ndcg: dict[str, list[float]] = {"BM25": [], **{name: [] for name in choices}}
    seconds, passes = [], set()
    for q in tqdm(qids, desc="rank", unit="query"):
        docs = [corpus[d] for d in candidates[q][: args.candidates]]
        ndcg["BM25"].append(ndcg_at_10([d.id for d in docs], qrels[q]))
        began = time.perf_counter()
        mass, used, _ = attention_scores(model, tok, queries[q], docs)
        seconds.append(time.perf_counter() - began)
        passes.add(used)
        for name, weights in choices.items():
            scores = np.einsum("lh,lhd->d", weights, mass)
            ndcg[name].append(ndcg_at_10([docs[i].id for i in np.argsort(-scores, kind="stable")], qrels[q]))
    latency = []
    for n in LATENCY_SIZES:
        times, used, cap = [], 0, 0
        for q in qids[: args.latency_queries]:
            began = time.perf_counter()
            _, used, cap = attention_scores(model, tok, queries[q], [corpus[d] for d in candidates[q][:n]])
            times.append(time.perf_counter() - began)
        latency.append({"docs": n, "seconds": round(float(np.mean(times)), 2), "passes": used, "doc_tokens": cap})
    out = Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"method": k, "ndcg@10": round(float(np.mean(v)), 4), "queries": len(v)} for k, v in ndcg.items()]
    doc = {
        "command": "python bench/rank_scifact.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "dtype": args.dtype,
        "split": args.split,
        "queries": len(qids),
        "candidates": args.candidates,
        "rows": rows,
        "seconds_per_query": round(float(np.mean(seconds)), 2),
        "passes_per_query": sorted(passes),
        "latency": latency,
    }
    suffix = "" if args.split == "test" else "-" + args.split
    (out / f"rank_scifact{suffix}.json").write_text(json.dumps(doc, indent=1))
    lines = [
        f"# {args.model}: ICR re-ranking on BEIR SciFact ({args.split})",
        "",
        f"Command: `{doc['command']}`; {len(qids)} queries, BM25 top-{args.candidates} re-ranked, {args.dtype}.",
        "",
        "| method | nDCG@10 |",
        "|---|---|",
        *[f"| {r['method']} | {r['ndcg@10']:.4f} |" for r in rows],
        "",
        f"{doc['seconds_per_query']} s per query ({', '.join(map(str, sorted(passes)))} forward passes).",
        "",
        "| documents | seconds per query | forward passes | tokens per document |",
        "|---|---|---|---|",
        *[f"| {r['docs']} | {r['seconds']} | {r['passes']} | {r['doc_tokens']} |" for r in latency],
    ]
    (out / f"rank_scifact{suffix}.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    plot(rows, latency, out / f"rank_scifact{suffix}.png", args.model)


def plot(rows: list[dict], latency: list[dict], path: Path, model: str) -> None:
    """nDCG@10 per method, and latency against the number of documents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    a.barh([r["method"] for r in rows][::-1], [r["ndcg@10"] for r in rows][::-1], color="#2a7")
    a.set_xlabel("nDCG@10")
    b.plot([r["docs"] for r in latency], [r["seconds"] for r in latency], "o-")
    b.set_xlabel("documents per query")
    b.set_ylabel("seconds per query")
    b.set_ylim(bottom=0)
    fig.suptitle(f"{model}: SciFact re-ranking")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
