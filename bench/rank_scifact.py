"""attention re-ranking (ICR) of BM25 candidates on BEIR SciFact.

    python -m bench.rank_scifact --data DIR --dtype bfloat16          # ~45 min on 2 CPU cores
    python -m bench.rank_scifact --data DIR --dtype bfloat16 --model gemma3-270m

Same as `headwise bench rank --data ...`. The data is read from the path given (BEIR layout:
corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and is not shipped: SciFact's corpus is under
non-commercial terms (see that folder's README). BM25 (`bm25s`, English stop words and Snowball
stemmer) indexes the whole corpus; its top candidates are re-ranked by ICR from one pair of
passes per query, read through every head and through the shipped head map's retrieval heads.
Writes bench/results/<model>/rank_scifact.json, .md and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import headwise as hw
from bench.common import command, results_dir
from headwise.eval.beir import rank_benchmark, write_rank_report


def main() -> None:
    """Run the benchmark and save its report under bench/results/<model>/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BEIR SciFact folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--split", default="test")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--limit", type=int, help="only the first N queries (for a quick look)")
    parser.add_argument("--latency-queries", type=int, default=10)
    parser.add_argument("--headmap", type=Path, help="head map file; default: the one headwise ships for --model")
    args = parser.parse_args()
    model, tok = hw.load_model(args.model, args.dtype)
    headmap = hw.HeadMap.load(args.headmap, model) if args.headmap else hw.shipped_headmap(args.model)
    doc = rank_benchmark(
        model,
        tok,
        headmap,
        args.data,
        args.split,
        args.candidates,
        args.limit,
        args.latency_queries,
    )
    doc = {"command": command(), **doc, "model": args.model}
    sys.stdout.write(write_rank_report(doc, results_dir(args.model)))


if __name__ == "__main__":
    main()
