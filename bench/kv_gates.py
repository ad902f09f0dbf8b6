"""Rank KV heads for HeadwiseCache by trained gates (DuoAttention-style) or by retrieval score, on dev needles.

    python -m bench.kv_gates --model smollm2-135m      # ~45 min on 2 CPU cores

Gates (headwise.scores.gates.GateScore) are trained on Pride and Prejudice at 1K-7K tokens, once per --l1, on
--data: needles 7-12 of the shipped list (`needles`, 48 prompts), needles whose answer is a made-up name
(`names`, 3 names, 24 prompts) or a made-up name and a common word (`phrases`, 3 names, 24 prompts),
synthetic pass keys (`passkey`, 3 random keys, 24 prompts) and multi-value needles (`multi`, 4 lucky
numbers each, 24 prompts), or a mix of them. The shipped gate map
is `--data needles,names --l1 1.0 --name kv_gates-names` (headmap-gates-names-1.0.json).
Each map then ranks the KV heads of a HeadwiseCache on kv_window.py's dev tests (needles 4-6, Pride and
Prejudice): never the held-out needles or the book that kv_cache.py evaluates on. Writes
bench/results/<model>/<--name>.json / .md and the maps as headmap-<--name without kv_>-<l1>.json (+ .png):
headmap-gates-1.0.json for the default name; kv_cache.py --map then evaluates a map on held-out needles.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import headwise as hw
from bench.caches import run_cache, save_table
from bench.common import command, results_dir
from headwise.core.needles import NeedleTest
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import (
    code_needles,
    load_needles,
    make_multi_test,
    make_tests,
    name_needles,
    passkey_needles,
)
from headwise.scores.gates import GATE_STEPS, GateScore, gate_data


def main() -> None:
    """Train gates for each L1 weight, then run the full cache and each ranking at each budget; save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--headmap", type=Path, help="retrieval head map (default: the one shipped for --model)")
    parser.add_argument("--l1", default="0.2,0.5,1.0", help="L1 weights on the mean gate, comma-separated")
    parser.add_argument("--dtype", default="float32", help="model dtype (the shipped gates: float32)")
    parser.add_argument("--steps", type=int, default=GATE_STEPS, help="training steps, one prompt each")
    parser.add_argument("--train-lengths", default="1000,2000,4000,7000")
    parser.add_argument(
        "--data", default="needles", help="training prompts: needles, names, codes, phrases, passkey, multi"
    )
    parser.add_argument("--lengths", default="1200,2400", help="lengths of the dev tests")
    parser.add_argument("--budgets", default="0.2,0.3")
    parser.add_argument("--name", default="kv_gates", help="file name of the results under bench/results/<model>/")
    args = parser.parse_args()
    out = results_dir(args.model)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = hw.load_model(args.model, dtype=args.dtype)
    book = load_haystack("pride-and-prejudice")
    train_lengths = [int(x) for x in args.train_lengths.split(",")]
    data = gate_data(model, tok, training_tests(tok, book, args.data.split(","), train_lengths))
    maps = {"headwise": hw.HeadMap.load(args.headmap, model) if args.headmap else hw.shipped_headmap(args.model)}
    for l1 in args.l1.split(","):
        gates = GateScore(steps=args.steps, l1=float(l1)).fit(model, data)
        stem = f"headmap-{args.name.removeprefix('kv_')}-{l1}"  # headmap-gates-1.0 for the default name
        gates.save(out / f"{stem}.json")
        gates.plot(out / f"{stem}.png")
        maps[f"headwise-gates-{l1}"] = gates
    lengths = [int(x) for x in args.lengths.split(",")]
    tests = make_tests(tok, book, load_needles()[4:7], lengths, [0.1, 0.5, 0.9], 5)
    rows = [run_cache(model, tok, tests, "full", 1.0, None, 0)]
    for budget in (float(b) for b in args.budgets.split(",")):
        rows += [run_cache(model, tok, tests, name, budget, hm, 64) for name, hm in maps.items()]
    doc = {"command": command(), "train_lengths": train_lengths, "lengths": lengths, "rows": rows}
    save_table(
        out / args.name,
        doc,
        f"{args.model}: KV heads ranked by trained gates vs retrieval score (dev needles)",
        f"Command: `{doc['command']}`. Gates trained on {args.data} ({len(data.tests)} prompts) in pride-and-prejudice "
        f"at {train_lengths} tokens, {args.steps} steps; evaluated on {len(tests)} dev tests (needles 4-6, "
        f"pride-and-prejudice), lengths {lengths}, depths [0.1, 0.5, 0.9].",
    )


def training_tests(tok, book, kinds: list[str], lengths: list[int]) -> list[NeedleTest]:
    """Gate-training prompts of each kind, in `book` at `lengths`: none of them uses a needle that an
    evaluation grid reads (needles 7-12 are only trained on; pass keys and lucky numbers are random)."""
    starts, sentences = random.Random(13), book.num_sentences(tok)  # where each multi-value prompt's prose begins
    makers = {
        "needles": lambda: make_tests(tok, book, load_needles()[7:13], lengths, [0.25, 0.75], seed=11),
        "passkey": lambda: make_tests(tok, book, passkey_needles(3, seed=11), lengths, [0.25, 0.75], seed=12),
        "names": lambda: make_tests(tok, book, name_needles(3, seed=11), lengths, [0.25, 0.75], seed=14),
        "codes": lambda: make_tests(tok, book, code_needles(3, seed=17), lengths, [0.25, 0.75], seed=18),
        "phrases": lambda: make_tests(tok, book, name_needles(3, seed=15, words=2), lengths, [0.25, 0.75], seed=16),
        "multi": lambda: [
            make_multi_test(tok, book, 4, n, start=starts.randrange(sentences), seed=100 * i + j)
            for i, n in enumerate(lengths)
            for j in range(24 // len(lengths))
        ],
    }
    unknown = set(kinds) - set(makers)
    if unknown:
        raise SystemExit(f"unknown --data {sorted(unknown)}; choose from {sorted(makers)}")
    return [t for kind in kinds for t in makers[kind]()]


if __name__ == "__main__":
    main()
