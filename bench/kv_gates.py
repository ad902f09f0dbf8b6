"""Rank KV heads for HeadwiseCache by trained gates (DuoAttention-style) or by retrieval score, on dev needles.

    python bench/kv_gates.py --model smollm2-135m      # ~45 min on 2 CPU cores

Gates (headwise.profile.fit_gates) are trained on Pride and Prejudice with needles 7-12 of the shipped list
at 1K-7K tokens, once per --l1. Each map then ranks the KV heads of a HeadwiseCache on kv_window.py's dev
tests (needles 4-6, Pride and Prejudice): never the held-out needles or the book that kv_cache.py
evaluates on. Writes bench/results/<model>/headmap-gates-<l1>.json (+ .png) and kv_gates.json / .md;
kv_cache.py --map then evaluates the chosen map on held-out needles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kv_cache import command_line, run_cache, save_table  # bench/ is on the path when a script here runs

from headwise.haystack import load_haystack
from headwise.headmap import HeadMap, shipped_headmap
from headwise.models import load_model
from headwise.profile import GATE_STEPS, fit_gates, gate_data
from headwise.tasks import load_needles, make_tests


def main() -> None:
    """Train gates for each L1 weight, then run the full cache and each ranking at each budget; save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--headmap", type=Path, help="retrieval head map (default: the one shipped for --model)")
    parser.add_argument("--l1", default="0.2,0.5,1.0", help="L1 weights on the mean gate, comma-separated")
    parser.add_argument("--steps", type=int, default=GATE_STEPS, help="training steps, one prompt each")
    parser.add_argument("--train-lengths", default="1000,2000,4000,7000")
    parser.add_argument("--lengths", default="1200,2400", help="lengths of the dev tests")
    parser.add_argument("--budgets", default="0.2,0.3")
    parser.add_argument("--name", default="kv_gates", help="file name of the results under bench/results/<model>/")
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model)
    book = load_haystack("pride-and-prejudice")
    train_lengths = [int(x) for x in args.train_lengths.split(",")]
    data = gate_data(model, tok, make_tests(tok, book, load_needles()[7:13], train_lengths, [0.25, 0.75], seed=11))
    maps = {"headwise": HeadMap.load(args.headmap, model) if args.headmap else shipped_headmap(args.model)}
    for l1 in args.l1.split(","):
        gates = fit_gates(model, data, steps=args.steps, l1=float(l1))
        gates.save(out / f"headmap-gates-{l1}.json")
        gates.plot(out / f"headmap-gates-{l1}.png")
        maps[f"headwise-gates-{l1}"] = gates
    lengths = [int(x) for x in args.lengths.split(",")]
    tests = make_tests(tok, book, load_needles()[4:7], lengths, [0.1, 0.5, 0.9], 5)
    rows = [run_cache(model, tok, tests, "full", 1.0, None, 0)]
    for budget in (float(b) for b in args.budgets.split(",")):
        rows += [run_cache(model, tok, tests, name, budget, hm, 64) for name, hm in maps.items()]
    command = command_line("kv_gates.py")
    doc = {"command": command, "train_lengths": train_lengths, "lengths": lengths, "rows": rows}
    save_table(
        out / args.name,
        doc,
        f"{args.model}: KV heads ranked by trained gates vs retrieval score (dev needles)",
        f"Command: `{command}`. Gates trained on needles 7-12 in pride-and-prejudice at {train_lengths} tokens "
        f"(depths 0.25, 0.75), {args.steps} steps; evaluated on {len(tests)} dev tests (needles 4-6, "
        f"pride-and-prejudice), lengths {lengths}, depths [0.1, 0.5, 0.9].",
    )


if __name__ == "__main__":
    main()
