"""Relevance heads for re-ranking on BEIR SciFact: the reading, heads, layer window and fusion weights chosen on
train claims, then evaluated on the 300 test claims and on the train claims no choice saw.

    python -m bench.rank_relevance --data ../shared/data/ir/scifact --model gemma3-270m     # ~60 min each
    python -m bench.rank_relevance --data ../shared/data/ir/scifact --model smollm2-135m

Data rule: every choice (the reading, each head's relevance score, how many heads, the layer window, every
fusion weight) uses only the first `--dev` (at most 400) query ids of qrels/train.tsv, in its order. The test
claims and the train claims after the first 400 are only evaluated. Each query's BM25 top-20 (full corpus),
its calibrated attention tables (layers x heads x candidates for each reading, one pair of forward passes)
and MiniLM scores are kept in runs/rank-masses/, so a rerun computes only what is missing; every row below
is a different reading of the same tables. Latency vs list size is timed on the first test claims. Writes
bench/results/<model>/rank_relevance.json, .md, .png, the relevance head map and its heatmap.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

import headwise as hw
from bench.common import ROOT, command, results_dir, write_json
from headwise.apps.rank import READINGS, Reading, attention_tables
from headwise.core.models import model_shape
from headwise.eval.beir import LATENCY_SIZES, Embedder, bm25_candidates, load_beir
from headwise.eval.relevance import (
    TOPS,
    Table,
    best_top,
    best_weight,
    fused_with_first_stage,
    mean_ndcg,
    reading_maps,
    through,
    tuned_map,
)
from headwise.scores.relevance import relevance_headmap

MAX_DEV = 400  # the only train claims any choice may look at
MIN_WINDOW = 3  # fewest layers in a layer window
LATENCY_QUERIES = 3


@dataclass
class WithEmbeddings(Table):
    """A query's tables plus MiniLM's scores of its candidates (the dense baseline)."""

    minilm: np.ndarray


def label(reading: Reading) -> str:
    """A reading in a row name."""
    rows = "query rows" if reading.rows == "query" else "query + turn-end rows"
    return rows + (", outlier tokens dropped" if reading.drop_outliers else "")


def key(reading: Reading) -> str:
    """A reading as a cache key."""
    return f"{reading.rows}/{int(reading.drop_outliers)}"


def tables(model, tok, name: str, corpus, queries: dict[str, str], candidates: int, cache: Path) -> dict:
    """Per query: candidate ids, BM25 and MiniLM scores, the calibrated attention tables and their seconds."""
    kept = dict(np.load(cache, allow_pickle=True).item()) if cache.is_file() else {}
    missing = [q for q in queries if q not in kept]
    if missing:
        pool = bm25_candidates(corpus, {q: queries[q] for q in missing}, candidates)
        embedder = Embedder()
        for i, q in enumerate(tqdm(missing, desc=f"attention ({name})", unit="query")):
            docs = [corpus[d] for d, _ in pool[q]]
            began = time.perf_counter()
            masses, passes, _ = attention_tables(model, tok, queries[q], docs)
            kept[q] = {
                "ids": [d.id for d in docs],
                "bm25": np.array([s for _, s in pool[q]]),
                "minilm": embedder.scores(queries[q], docs),
                "masses": {key(r): m.astype(np.float32) for r, m in masses.items()},
                "seconds": time.perf_counter() - began,
                "passes": passes,
            }
            if i % 20 == 19 or i == len(missing) - 1:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, np.array(kept, dtype=object), allow_pickle=True)
    return {q: kept[q] for q in queries}


def latency(model, tok, corpus, queries: dict[str, str]) -> list[dict]:
    """Mean seconds and passes per query for BM25 lists of each size in LATENCY_SIZES."""
    pool = bm25_candidates(corpus, queries, max(LATENCY_SIZES))
    out = []
    for n in LATENCY_SIZES:
        times, passes, cap = [], 0, 0
        for q, text in queries.items():
            began = time.perf_counter()
            _, passes, cap = attention_tables(model, tok, text, [corpus[d] for d, _ in pool[q][:n]])
            times.append(time.perf_counter() - began)
        out.append({"docs": n, "seconds": round(float(np.mean(times)), 2), "passes": passes, "doc_tokens": cap})
    return out


def top_weights(headmap, count: int, layers: tuple[int, int]) -> np.ndarray:
    """1 for the map's `count` best heads within the layer window `layers`, 0 elsewhere."""
    scores = headmap.scores.copy()
    outside = np.ones(len(scores), dtype=bool)
    outside[layers[0] : layers[1] + 1] = False
    scores[outside] = -np.inf
    weights = np.zeros_like(scores)
    for i in np.argsort(-scores, axis=None, kind="stable")[:count]:
        weights[np.unravel_index(i, scores.shape)] = 1.0
    return weights


def layer_weights(shape, layers: tuple[int, int]) -> np.ndarray:
    """1 for every head of layers `layers[0]..layers[1]` (a Selective-ICR layer window), 0 elsewhere."""
    weights = np.zeros((shape.num_layers, shape.num_heads))
    weights[layers[0] : layers[1] + 1] = 1.0
    return weights


def plot(rows: list[dict], model: str, path: Path) -> None:
    """Test nDCG@10 per method, BM25 marked."""
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.2))
    names = [r["method"] for r in rows][::-1]
    values = [r["test"] for r in rows][::-1]
    ax.barh(names, values, color=["#4c72b0" if "BM25" not in n or n == "BM25" else "#55a868" for n in names])
    ax.axvline(rows[0]["test"], color="black", lw=0.8, ls="--", label="BM25")
    ax.set_xlim(min(values) - 0.05, max(values) + 0.03)
    ax.set_xlabel("nDCG@10, 300 SciFact test claims")
    ax.set_title(f"{model}: re-ranking BM25's top 20")
    ax.legend(loc="lower right")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU or GPU runs it fast")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--dev", type=int, default=MAX_DEV, help=f"dev claims: the first N (<= {MAX_DEV}) train ids")
    parser.add_argument("--check", type=int, help="unseen train claims (after the first 400) to report; default all")
    parser.add_argument("--test", type=int, help="only the first N test claims (for a quick look)")
    args = parser.parse_args()
    if not 0 < args.dev <= MAX_DEV:
        raise SystemExit(f"--dev must be 1..{MAX_DEV}: choices may see only the first {MAX_DEV} train claims")
    model, tok = hw.load_model(args.model, args.dtype)
    dtype = str(model.dtype).removeprefix("torch.")
    shape = model_shape(model)
    corpus, train_q, train_rel = load_beir(args.data, "train")
    _, test_q, test_rel = load_beir(args.data, "test")
    train_ids = list(train_rel)  # qrels/train.tsv order
    check_end = None if args.check is None else MAX_DEV + args.check
    splits = {
        "dev": train_ids[: args.dev],
        "test": sorted(test_q, key=lambda q: (len(q), q))[: args.test],
        "check": train_ids[MAX_DEV:check_end],
    }
    qrels = {**train_rel, **test_rel}
    texts = {**train_q, **test_q}
    cache = ROOT / "runs" / "rank-masses"
    rows = {
        split: tables(
            model, tok, split, corpus, {q: texts[q] for q in qids}, args.candidates,
            cache / f"{args.model}-{dtype}-{split}-readings.npy",
        )
        for split, qids in splits.items()
    }  # fmt: skip
    split_tables = {
        split: [
            WithEmbeddings(r["ids"], r["bm25"], {x: r["masses"][key(x)] for x in READINGS}, qrels[q], r["minilm"])
            for q, r in split_rows.items()
        ]
        for split, split_rows in rows.items()
    }
    dev = split_tables["dev"]
    marks, totals = [t.marks for t in dev], [len(t.relevant) for t in dev]
    about = {
        "data": f"BEIR SciFact train: the first {args.dev} query ids of qrels/train.tsv (in its order)",
        "candidates": f"BM25 top-{args.candidates} over the whole corpus",
        "dtype": dtype,
    }

    # choices, on dev only
    relevance = tuned_map(args.model, shape.num_kv_heads, dev, "ndcg", about)
    chosen = Reading(**relevance.method["reading"])
    per_reading = reading_maps(args.model, shape.num_kv_heads, dev)
    contrastive = relevance_headmap(
        args.model, shape.num_kv_heads, [t.masses[chosen] for t in dev], marks, totals, "contrastive", about
    )
    contrastive_top = best_top(dev, contrastive, chosen)
    read = np.any([np.any(t.masses[chosen] != 0, axis=(1, 2)) for t in dev], axis=0)  # not sliding-window layers
    windows = [
        (a, b)
        for a, b in itertools.combinations(range(shape.num_layers), 2)
        if b - a + 1 >= MIN_WINDOW and read[a : b + 1].any()
    ]
    window = max(windows, key=lambda w: (mean_ndcg(dev, through(layer_weights(shape, w), chosen)), w[0] - w[1]))
    in_window = max(TOPS, key=lambda k: mean_ndcg(dev, through(top_weights(relevance, k, window), chosen)))
    needle = hw.shipped_headmap(args.model)
    top = relevance.method["top"]
    methods = {
        "BM25": lambda t: t.first_stage,
        "all-MiniLM-L6-v2 embeddings": lambda t: t.minilm,
        "ICR, all heads": through(np.ones((shape.num_layers, shape.num_heads)), chosen),
        "ICR, needle retrieval heads (top 5%)": through(needle.weights("5%"), chosen),
        **{
            f"ICR, relevance heads (top {k}), {label(r)}" + (" [chosen]" if r == chosen else ""): through(
                hm.weights(k), r
            )
            for r, (hm, k, _) in per_reading.items()
        },
        f"ICR, contrastive relevance heads (top {contrastive_top})": through(
            contrastive.weights(contrastive_top), chosen
        ),
        f"ICR, all heads of layers {window[0]}-{window[1]}": through(layer_weights(shape, window), chosen),
        f"ICR, relevance heads (top {in_window}) in layers {window[0]}-{window[1]}": through(
            top_weights(relevance, in_window, window), chosen
        ),
    }
    fusion_weights = {name: best_weight(dev, score) for name, score in list(methods.items())[1:]}
    methods |= {
        f"{name} + BM25 (weight {w})": fused_with_first_stage(methods[name], w) for name, w in fusion_weights.items()
    }
    table = [
        {"method": name, **{split: round(mean_ndcg(split_tables[split], score), 4) for split in rows}}
        for name, score in methods.items()
    ]
    out = results_dir(args.model)
    relevance.save(out / "headmap-relevance.json")
    relevance.plot(out / "headmap-relevance.png")
    plot(table, args.model, out / "rank_relevance.png")
    seconds = [r["seconds"] for split in rows.values() for r in split.values()]
    timed = dict(itertools.islice(((q, texts[q]) for q in splits["test"]), LATENCY_QUERIES))
    doc = {
        "command": command(),
        "model": args.model,
        "dtype": dtype,
        "data_rule": about["data"] + "; every choice made on these only. Test claims and the train claims after "
        f"the first {MAX_DEV} are evaluated only.",
        "queries": {split: len(r) for split, r in rows.items()},
        "chosen": {
            "reading": relevance.method["reading"],
            "top": top,
            "fusion_weight": relevance.method["fusion"]["weight"],
            "contrastive_top": contrastive_top,
            "layer_window": window,
            "relevance_top_in_window": in_window,
        },
        "rows": table,
        "seconds_per_query": round(float(np.mean(seconds)), 2),
        "passes_per_query": sorted({r["passes"] for split in rows.values() for r in split.values()}),
        "latency": latency(model, tok, corpus, timed),
    }
    write_json(out / "rank_relevance.json", doc)
    lines = [
        f"# {args.model}: relevance heads for re-ranking BEIR SciFact (nDCG@10, BM25 top-{args.candidates})",
        "",
        f"`{doc['command']}`; {dtype}. {doc['data_rule']}",
        "",
        f"Chosen on dev: the reading ({label(chosen)}; every ICR row below reads it unless its name gives "
        f"another), relevance heads top {top}, contrastive top {contrastive_top}, layer window "
        f"{window[0]}-{window[1]} (top {in_window} relevance heads inside it); fusion weights in the row names "
        "(1 = attention only).",
        "",
        f"| method | test ({len(rows['test'])}) | unseen train ({len(rows['check'])}) | dev ({len(rows['dev'])}) |",
        "|---|---:|---:|---:|",
        *[f"| {r['method']} | {r['test']:.4f} | {r['check']:.4f} | {r['dev']:.4f} |" for r in table],
        "",
        f"{doc['seconds_per_query']} s per query, {doc['passes_per_query']} forward passes (every row reads the "
        "same pair of passes). Latency vs list size (mean of the first "
        f"{len(timed)} test claims):",
        "",
        "| documents | seconds per query | forward passes | tokens per document |",
        "|---:|---:|---:|---:|",
        *[f"| {x['docs']} | {x['seconds']} | {x['passes']} | {x['doc_tokens']} |" for x in doc["latency"]],
    ]
    (out / "rank_relevance.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
