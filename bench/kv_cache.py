"""Benchmark for issue #3 (first part): needle accuracy vs KV memory for full, headwise and sink+window caches.

    python bench/kv_cache.py --model smollm2-135m      # ~15 min on 2 CPU cores

Every method runs the same needle grid at the same budgets; KV bytes are measured from the cache
objects at the end of each answer. Writes bench/results/<model>/kv_cache.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from headwise.cache import cache_factory
from headwise.haystack import load_haystack
from headwise.headmap import shipped_headmap
from headwise.models import load_model
from headwise.niah import run_niah
from headwise.tasks import load_needles, make_tests, pick_needles

BUDGETS = (0.2, 0.3, 0.5, 0.7)
SINK = 4


def main() -> None:
    """Run full once, then headwise and window at each budget; save table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1200,2400")
    parser.add_argument("--needles", type=int, default=3)
    parser.add_argument("--window", type=int, default=256, help="largest window for headwise's non-retrieval heads")
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    model, tok = load_model(args.model)
    headmap = shipped_headmap(args.model)
    tests = make_tests(
        tok,
        load_haystack("frankenstein"),
        pick_needles(load_needles(), args.needles, held_out=True),
        lengths,
        [0.1, 0.5, 0.9],
        seed=3,
    )
    rows = []

    def run(method: str, budget: float, window: int) -> None:
        began = time.perf_counter()
        result = run_niah(model, tok, tests, make_cache=cache_factory(model, method, budget, headmap, SINK, window))
        rows.append(
            {
                "method": method,
                "budget": budget,
                "window": window if method == "headwise" else None,
                "accuracy": result.accuracy,
                "correct": sum(o.correct for o in result.outcomes),
                "tests": len(tests),
                "kv_ratio": result.kv_ratio,
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
        sys.stdout.write(
            f"{method:9} budget {budget:.0%}: {rows[-1]['correct']}/{len(tests)}, KV {result.kv_ratio:.0%}\n"
        )

    run("full", 1.0, 0)
    for budget in BUDGETS:
        # Split the budget: non-retrieval heads keep at most half of it as sink + window, the rest pays for full heads.
        window = max(1, min(args.window, round(budget * min(lengths) / 2) - SINK))
        run("headwise", budget, window)
        run("window", budget, 0)
    doc = {
        "command": "python bench/kv_cache.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "lengths": lengths,
        "depths": [0.1, 0.5, 0.9],
        "needles": args.needles,
        "rows": rows,
    }
    (out / "kv_cache.json").write_text(json.dumps(doc, indent=1))
    lines = [
        f"# {args.model}: needle accuracy vs KV memory",
        "",
        f"Command: `{doc['command']}`; {len(tests)} tests, lengths {lengths}, depths 0.1/0.5/0.9.",
        "",
        "| method | budget | window | accuracy | KV held |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['budget']:.0%} | {r['window'] or ''} | {r['correct']}/{r['tests']} | "
        f"{r['kv_ratio']:.0%} |"
        for r in rows
    ]
    (out / "kv_cache.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "kv_cache.png", args.model)


def plot(rows: list[dict], path: Path, model: str) -> None:
    """Accuracy against measured KV share, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, style in (("headwise", "o-"), ("window", "s--"), ("full", "k*")):
        pts = sorted((r["kv_ratio"], r["accuracy"]) for r in rows if r["method"] == method)
        ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], style, label=method, markersize=9)
    ax.set_xlabel("KV cache held (% of full)")
    ax.set_ylabel("needle accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(f"{model}: accuracy vs KV memory")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
