"""Which non-retrieval heads does the model need? Zero-mask each layer, then each head of the layers that break.

    python -m bench.critical_heads --model smollm2-135m      # ~6 min on 2 CPU cores

Zero-output masking of k random heads sometimes wrecks a small model for reasons unrelated to
retrieval; this finds the heads responsible and shows their layer, retrieval score and sink score.
Writes bench/results/<model>/critical_heads.json and .md.
"""

from __future__ import annotations

import argparse
import sys

import headwise as hw
from bench.common import accuracy, command, results_dir, write_json
from bench.grids import CRITICAL


def main() -> None:
    """Screen layers, then heads, under both masking modes; save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tests", type=int, default=4, help="held-out needle tests per masked set")
    args = parser.parse_args()
    out = results_dir(args.model)
    headmap = hw.HeadMap.load(out / "headmap-frankenstein.json")
    model, tok = hw.load_model(args.model)
    tests = hw.needle_tests(tok, CRITICAL)[: args.tests]
    baseline = accuracy(model, tok, tests, "baseline")
    layers = []
    for layer in range(headmap.num_layers):
        heads = [(layer, h) for h in range(headmap.num_heads)]
        row = {"layer": layer}
        for mode in ("zero", "uniform"):
            with hw.mask_heads(model, heads, mode):
                row[mode] = accuracy(model, tok, tests, f"layer {layer} {mode}")
        layers.append(row)
    critical = []
    for row in layers:
        if row["zero"] >= 0.5 * baseline:
            continue
        for head in range(headmap.num_heads):
            entry = {"layer": row["layer"], "head": head}
            for mode in ("zero", "uniform"):
                with hw.mask_heads(model, [(row["layer"], head)], mode):
                    entry[mode] = accuracy(model, tok, tests, f"L{row['layer']}H{head} {mode}")
            entry["retrieval_score"] = float(headmap.scores[row["layer"], head])
            entry["sink_score"] = float(headmap.sink[row["layer"], head]) if headmap.sink is not None else None
            critical.append(entry)
    doc = {
        "command": command(),
        "tests": len(tests),
        "baseline": baseline,
        "layers": layers,
        "heads_in_breaking_layers": critical,
    }
    write_json(out / "critical_heads.json", doc)
    lines = [
        f"# {args.model}: heads the model cannot lose",
        "",
        f"Command: `{doc['command']}`; {len(tests)} held-out needle tests, baseline {baseline:.0%}.",
        "",
        "Whole layer masked (all heads) — layers where zero-masking drops accuracy below half the baseline:",
        "",
        "| layer | zero | uniform |",
        "|---|---|---|",
        *[f"| {r['layer']} | {r['zero']:.0%} | {r['uniform']:.0%} |" for r in layers if r["zero"] < 0.5 * baseline],
        "",
        "Single heads of those layers (accuracy with only that head masked):",
        "",
        "| head | zero | uniform | retrieval score | sink score |",
        "|---|---|---|---|---|",
        *[
            f"| L{c['layer']}H{c['head']} | {c['zero']:.0%} | {c['uniform']:.0%} | {c['retrieval_score']:.3f} | "
            f"{c['sink_score']:.2f} |"
            for c in critical
        ],
    ]
    (out / "critical_heads.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
