"""Relevance heads for re-ranking on BEIR SciFact: heads, layer window and fusion weights chosen on train
claims, then evaluated on the 300 test claims and on train claims no choice saw.

    python -m bench.rank_relevance --data ../shared/data/ir/scifact --dtype bfloat16     # ~90 min, SmolLM2
    python -m bench.rank_relevance --data ../shared/data/ir/scifact --dtype bfloat16 --model gemma3-270m

Data rule: every choice (each head's relevance score, how many heads, the layer window, every fusion
weight) uses only the first `--dev` (at most 400) query ids of qrels/train.tsv, in its order. The test
claims and the train claims after the first 400 (the first `--check` of them) are only evaluated. Each
query's BM25 top-20 (full corpus), its calibrated attention table (layers x heads x candidates, one pair
of forward passes) and MiniLM scores are kept in runs/rank-masses/, so a rerun computes only what is
missing; every row below is a different reading of the same tables. Writes
bench/results/<model>/rank_relevance.json, .md, the relevance head map and its heatmap.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import headwise as hw
from bench.common import ROOT, command, results_dir, write_json
from headwise.apps.rank import attention_scores
from headwise.core.models import model_shape
from headwise.eval.beir import Embedder, bm25_candidates, load_beir
from headwise.eval.relevance import TOPS, Table, best_weight, fused_with_first_stage, mean_ndcg, through
from headwise.scores.relevance import relevance_headmap

MAX_DEV = 400  # the only train claims any choice may look at
MIN_WINDOW = 3  # fewest layers in a layer window


@dataclass
class WithEmbeddings(Table):
    """A query's table plus MiniLM's scores of its candidates (the dense baseline)."""

    minilm: np.ndarray


def tables(model, tok, name: str, corpus, queries: dict[str, str], candidates: int, cache: Path) -> dict:
    """Per query: candidate ids, BM25 and MiniLM scores, the calibrated attention table and its seconds."""
    kept = dict(np.load(cache, allow_pickle=True).item()) if cache.is_file() else {}
    missing = [q for q in queries if q not in kept]
    if missing:
        pool = bm25_candidates(corpus, {q: queries[q] for q in missing}, candidates)
        embedder = Embedder()
        for i, q in enumerate(tqdm(missing, desc=f"attention ({name})", unit="query")):
            docs = [corpus[d] for d, _ in pool[q]]
            began = time.perf_counter()
            mass, passes, _ = attention_scores(model, tok, queries[q], docs)
            kept[q] = {
                "ids": [d.id for d in docs],
                "bm25": np.array([s for _, s in pool[q]]),
                "minilm": embedder.scores(queries[q], docs),
                "mass": mass.astype(np.float32),
                "seconds": time.perf_counter() - began,
                "passes": passes,
            }
            if i % 20 == 19 or i == len(missing) - 1:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, np.array(kept, dtype=object), allow_pickle=True)
    return {q: kept[q] for q in queries}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--dev", type=int, default=200, help=f"dev claims: the first N (<= {MAX_DEV}) train ids")
    parser.add_argument("--check", type=int, default=100, help="unseen train claims (after the first 400) to report")
    parser.add_argument("--test", type=int, help="only the first N test claims (for a quick look)")
    args = parser.parse_args()
    if not 0 < args.dev <= MAX_DEV:
        raise SystemExit(f"--dev must be 1..{MAX_DEV}: choices may see only the first {MAX_DEV} train claims")
    model, tok = hw.load_model(args.model, args.dtype)
    shape = model_shape(model)
    corpus, train_q, train_rel = load_beir(args.data, "train")
    _, test_q, test_rel = load_beir(args.data, "test")
    train_ids = list(train_rel)  # qrels/train.tsv order
    splits = {
        "dev": train_ids[: args.dev],
        "test": sorted(test_q, key=lambda q: (len(q), q))[: args.test],
        "check": train_ids[MAX_DEV : MAX_DEV + args.check],
    }
    qrels = {**train_rel, **test_rel}
    texts = {**train_q, **test_q}
    cache = ROOT / "runs" / "rank-masses"
    rows = {
        split: tables(
            model, tok, split, corpus, {q: texts[q] for q in qids}, args.candidates,
            cache / f"{args.model}-{args.dtype}-{split}.npy",
        )
        for split, qids in splits.items()
    }  # fmt: skip
    split_tables = {
        split: [WithEmbeddings(r["ids"], r["bm25"], r["mass"], qrels[q], r["minilm"]) for q, r in split_rows.items()]
        for split, split_rows in rows.items()
    }
    dev = split_tables["dev"]
    relevant = [t.marks for t in dev]
    totals = [len(t.relevant) for t in dev]
    about = {
        "data": f"BEIR SciFact train: the first {args.dev} query ids of qrels/train.tsv (in its order)",
        "candidates": f"BM25 top-{args.candidates} over the whole corpus",
        "dtype": args.dtype,
    }
    maps = {
        kind: relevance_headmap(args.model, shape.num_kv_heads, [t.mass for t in dev], relevant, totals, kind, about)
        for kind in ("ndcg", "contrastive")
    }
    needle = hw.shipped_headmap(args.model)

    # choices, on dev only
    tops = {
        kind: max(TOPS, key=lambda k, hm=hm: (mean_ndcg(dev, through(hm.weights(k))), -k)) for kind, hm in maps.items()
    }
    windows = [(a, b) for a, b in itertools.combinations(range(shape.num_layers), 2) if b - a + 1 >= MIN_WINDOW]
    window = max(windows, key=lambda w: (mean_ndcg(dev, through(layer_weights(shape, w))), w[0] - w[1]))
    in_window = max(TOPS, key=lambda k: mean_ndcg(dev, through(top_weights(maps["ndcg"], k, window))))
    methods = {
        "BM25": lambda t: t.first_stage,
        "all-MiniLM-L6-v2 embeddings": lambda t: t.minilm,
        "ICR, all heads": through(np.ones((shape.num_layers, shape.num_heads))),
        "ICR, needle retrieval heads (top 5%)": through(needle.weights("5%")),
        f"ICR, relevance heads (top {tops['ndcg']})": through(maps["ndcg"].weights(tops["ndcg"])),
        f"ICR, contrastive relevance heads (top {tops['contrastive']})": through(
            maps["contrastive"].weights(tops["contrastive"])
        ),
        f"ICR, all heads of layers {window[0]}-{window[1]}": through(layer_weights(shape, window)),
        f"ICR, relevance heads (top {in_window}) in layers {window[0]}-{window[1]}": through(
            top_weights(maps["ndcg"], in_window, window)
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
    relevance = maps["ndcg"]
    relevance.method["fusion"] = {
        "with": "bm25",
        "weight": fusion_weights[f"ICR, relevance heads (top {tops['ndcg']})"],
    }
    relevance.method["top"] = tops["ndcg"]
    relevance.save(out / "headmap-relevance.json")
    relevance.plot(out / "headmap-relevance.png")
    seconds = [r["seconds"] for split in rows.values() for r in split.values()]
    doc = {
        "command": command(),
        "model": args.model,
        "dtype": args.dtype,
        "data_rule": about["data"] + "; every choice made on these only. Test claims and the train claims after "
        f"the first {MAX_DEV} are evaluated only.",
        "queries": {split: len(r) for split, r in rows.items()},
        "chosen": {"top": tops, "layer_window": window, "relevance_top_in_window": in_window},
        "rows": table,
        "seconds_per_query": round(float(np.mean(seconds)), 2),
        "passes_per_query": sorted({r["passes"] for split in rows.values() for r in split.values()}),
    }
    write_json(out / "rank_relevance.json", doc)
    lines = [
        f"# {args.model}: relevance heads for re-ranking BEIR SciFact (nDCG@10, BM25 top-{args.candidates})",
        "",
        f"`{doc['command']}`; {args.dtype}. {doc['data_rule']}",
        "",
        f"Chosen on dev: relevance heads top {tops['ndcg']}, contrastive top {tops['contrastive']}, "
        f"layer window {window[0]}-{window[1]} (top {in_window} relevance heads inside it); fusion weights in the "
        "row names (1 = attention only).",
        "",
        f"| method | test ({len(rows['test'])}) | unseen train ({len(rows['check'])}) | dev ({len(rows['dev'])}) |",
        "|---|---:|---:|---:|",
        *[f"| {r['method']} | {r['test']:.4f} | {r['check']:.4f} | {r['dev']:.4f} |" for r in table],
        "",
        f"{doc['seconds_per_query']} s per query, {doc['passes_per_query']} forward passes (every row reads the "
        "same pair of passes).",
    ]
    (out / "rank_relevance.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
