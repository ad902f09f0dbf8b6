"""Benchmark for issue #2: are retrieval heads sparse, causal and stable, and how long does profiling take?

    python bench/retrieval_heads.py --model smollm2-135m      # ~25 min on 2 CPU cores

Writes bench/results/<model>/: results.json, summary.md, head maps (JSON + PNG) for two books,
ablation.png. Uses the same defaults as `headwise profile` and `headwise ablate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from headwise.ablate import DEFAULT_DEPTHS as ABL_DEPTHS
from headwise.ablate import DEFAULT_LENGTHS as ABL_LENGTHS
from headwise.ablate import DEFAULT_NEEDLES as ABL_NEEDLES
from headwise.ablate import Ablation, ablate, accuracy, mask_heads
from headwise.haystack import load_haystack
from headwise.headmap import HeadMap, overlap
from headwise.models import load_model
from headwise.profile import DEFAULT_DEPTHS, DEFAULT_LENGTHS, DEFAULT_NEEDLES, profile
from headwise.tasks import load_needles, make_tests, pick_needles

BOOKS = ("frankenstein", "pride-and-prejudice")


def critical_heads(model, tokenizer, tests, ablation: Ablation, headmap: HeadMap, drop: float = 0.5) -> list[dict]:
    """For each random draw whose zero-masking cost more than `drop` of the baseline, mask its heads one
    at a time on a few tests to find which single heads break the model, and describe them."""
    found: dict[tuple[int, int], dict] = {}
    probe_tests = tests[:: max(1, len(tests) // 6)][:6]
    for heads, acc in zip(ablation.random_heads, ablation.random, strict=True):
        if acc > ablation.baseline * (1 - drop):
            continue
        for head in heads:
            if head in found:
                continue
            with mask_heads(model, [head], "zero"):
                alone = accuracy(model, tokenizer, probe_tests, f"zero L{head[0]}H{head[1]} alone")
            if alone < 0.5:
                found[head] = {
                    "layer": head[0],
                    "head": head[1],
                    "accuracy_alone_masked": alone,
                    "retrieval_score": float(headmap.scores[head]),
                    "sink_score": float(headmap.sink[head]) if headmap.sink is not None else None,
                }
    return sorted(found.values(), key=lambda d: (d["layer"], d["head"]))


def plot_ablation(results: list[Ablation], path: Path, title: str) -> None:
    """Bars: baseline, top-k masked, each random draw and its mean, per masking mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        labels = ["none", f"top-{r.k}", *[f"rand {i + 1}" for i in range(len(r.random))], "rand mean"]
        values = [r.baseline, r.top, *r.random, r.random_mean]
        colors = ["grey", "crimson", *["steelblue"] * len(r.random), "navy"]
        ax.bar(labels, [100 * v for v in values], color=colors)
        ax.set_title(f"mask mode: {r.mode}")
        ax.set_ylim(0, 105)
        ax.tick_params(axis="x", rotation=60)
    axes[0][0].set_ylabel("needle accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run profile on two books, ablate both masking modes, study critical heads, save everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    model, tok = load_model(args.model, args.dtype)
    load_s = time.perf_counter() - began
    pool = load_needles()
    maps = {}
    for book in BOOKS:
        tests = make_tests(
            tok, load_haystack(book), pick_needles(pool, DEFAULT_NEEDLES), DEFAULT_LENGTHS, DEFAULT_DEPTHS
        )
        maps[book] = profile(model, tok, tests)
        maps[book].save(out / f"headmap-{book}.json")
        maps[book].plot(out / f"headmap-{book}.png")
    headmap = maps[BOOKS[0]]

    abl_tests = make_tests(
        tok, load_haystack(BOOKS[0]), pick_needles(pool, ABL_NEEDLES, held_out=True), ABL_LENGTHS, ABL_DEPTHS, seed=1
    )
    results = ablate(model, tok, headmap, abl_tests, k="5%", draws=5, exclude="10%")
    zero = next(r for r in results if r.mode == "zero")
    critical = critical_heads(model, tok, abl_tests, zero, headmap)
    plot_ablation(results, out / "ablation.png", f"{args.model}: masking {zero.k} heads, {len(abl_tests)} needle tests")

    above = headmap.above(0.1)
    doc = {
        "command": "python bench/retrieval_heads.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "dtype": args.dtype,
        "load_seconds": round(load_s, 1),
        "profile": {book: {**m.method, "top10": m.top(10), "above_0.1": len(m.above(0.1))} for book, m in maps.items()},
        "sparse": {"heads": headmap.scores.size, "above_0.1": len(above), "share": len(above) / headmap.scores.size},
        "stable": {"books": list(BOOKS), "top10_overlap": overlap(maps[BOOKS[0]], maps[BOOKS[1]], 10)},
        "ablation": {
            "tests": len(abl_tests),
            "lengths": ABL_LENGTHS,
            "depths": ABL_DEPTHS,
            "needles": "held out (last 4 shipped needles)",
            "seed": 1,
            "results": [r.to_dict() for r in results],
        },
        "critical_heads_zero_mode": critical,
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "summary.md").write_text(summary(doc))
    sys.stdout.write(summary(doc))


def summary(doc: dict) -> str:
    """The README-ready table."""
    first = doc["profile"][BOOKS[0]]
    lines = [
        f"# {doc['model']} ({doc['dtype']}): retrieval heads",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"- Profile ({first['tests']} tests, lengths {first['lengths']}, {len(first['depths'])} depths, "
        f"{first['needles']} needles, {first['haystacks'][0]}): {first['seconds']} s, "
        f"{first['tests_counted']}/{first['tests']} tests counted (answered correctly); "
        f"model load {doc['load_seconds']} s",
        f"- Sparse: {doc['sparse']['above_0.1']}/{doc['sparse']['heads']} heads ({doc['sparse']['share']:.1%}) "
        "score above 0.1",
        f"- Stable: top-10 overlap between {' and '.join(doc['stable']['books'])}: {doc['stable']['top10_overlap']}/10",
        f"- Top-10 heads ({BOOKS[0]}): " + ", ".join(f"L{l}H{h}" for l, h in first["top10"]),
        "",
        f"Ablation on {doc['ablation']['tests']} held-out needle tests (lengths {doc['ablation']['lengths']}, "
        f"depths {doc['ablation']['depths']}); random heads drawn from outside the top 10%:",
        "",
        "| mode | k | no masking | top-k masked | random-k draws | random mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["ablation"]["results"]:
        draws = " / ".join(f"{a:.0%}" for a in r["random"])
        lines.append(
            f"| {r['mode']} | {r['k']} | {r['baseline']:.0%} | {r['top']:.0%} | {draws} | {r['random_mean']:.0%} |"
        )
    crit = doc["critical_heads_zero_mode"]
    lines += ["", "Single heads whose zero-masking alone breaks the model (found inside failing random draws):", ""]
    if crit:
        lines += ["| head | accuracy with it masked | retrieval score | sink score |", "|---|---|---|---|"]
        lines += [
            f"| L{c['layer']}H{c['head']} | {c['accuracy_alone_masked']:.0%} | {c['retrieval_score']:.3f} | "
            f"{c['sink_score']:.2f} |"
            for c in crit
        ]
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
