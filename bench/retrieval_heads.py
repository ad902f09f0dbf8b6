"""Are retrieval heads sparse, causal and stable, and how long does profiling take?

    python -m bench.retrieval_heads --model smollm2-135m      # ~25 min on 2 CPU cores

Profiles on two books with `headwise profile`'s grid, ablates both mask modes on held-out needles
(bench/grids.py) and looks for single heads whose masking alone breaks the model. Writes
bench/results/<model>/: results.json, summary.md, head maps (JSON + PNG) for both books, ablation.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import headwise as hw
from bench.common import command, results_dir, write_json
from bench.grids import ABLATION, PROFILE, PROFILE_BOOKS
from headwise.core.headmap import HeadMap, overlap
from headwise.eval.ablate import Ablation
from headwise.eval.niah import evaluate
from headwise.plots import ablation_bars

BOOKS = PROFILE_BOOKS


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
            with hw.mask_heads(model, [head], "zero"):
                outcomes = evaluate(model, tokenizer, probe_tests, desc=f"zero L{head[0]}H{head[1]} alone")
                alone = sum(o.correct for o in outcomes) / len(outcomes)
            if alone < 0.5:
                found[head] = {
                    "layer": head[0],
                    "head": head[1],
                    "accuracy_alone_masked": alone,
                    "retrieval_score": float(headmap.scores[head]),
                    "sink_score": float(headmap.sink[head]) if headmap.sink is not None else None,
                }
    return sorted(found.values(), key=lambda d: (d["layer"], d["head"]))


def main() -> None:
    """Run profile on two books, ablate both masking modes, study critical heads, save everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or results_dir(args.model)
    out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    model, tok = hw.load_model(args.model, args.dtype)
    load_s = time.perf_counter() - began
    maps = {}
    for book in BOOKS:
        tests = hw.needle_tests(tok, replace(PROFILE, haystack=book))
        maps[book] = hw.profile(model, tok, tests)
        maps[book].save(out / f"headmap-{book}.json")
        maps[book].plot(out / f"headmap-{book}.png")
    headmap = maps[BOOKS[0]]

    abl_tests = hw.needle_tests(tok, ABLATION)
    results = hw.ablate(model, tok, headmap, abl_tests, top="5%", draws=5, exclude="10%", modes=("zero", "uniform"))
    zero = next(r for r in results if r.mode == "zero")
    critical = critical_heads(model, tok, abl_tests, zero, headmap)
    rows = [{"mode": r.mode, "baseline": r.baseline, "top": r.top, "random": r.random} for r in results]
    title = f"{args.model}: masking {zero.count} heads, {len(abl_tests)} needle tests"
    ablation_bars(rows, title, out / "ablation.png")

    above = headmap.above(0.1)
    doc = {
        "command": command(),
        "model": args.model,
        "dtype": args.dtype,
        "load_seconds": round(load_s, 1),
        "profile": {book: {**m.method, "top10": m.top(10), "above_0.1": len(m.above(0.1))} for book, m in maps.items()},
        "sparse": {"heads": headmap.scores.size, "above_0.1": len(above), "share": len(above) / headmap.scores.size},
        "stable": {"books": list(BOOKS), "top10_overlap": overlap(maps[BOOKS[0]], maps[BOOKS[1]], 10)},
        "ablation": {
            "tests": len(abl_tests),
            "lengths": list(ABLATION.lengths),
            "depths": list(ABLATION.depths),
            "needles": f"held out (last {ABLATION.needles} shipped needles)",
            "seed": ABLATION.seed,
            "results": [r.to_dict() for r in results],
        },
        "critical_heads_zero_mode": critical,
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    write_json(out / "results.json", doc)
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
            f"| {r['mode']} | {r['count']} | {r['baseline']:.0%} | {r['top']:.0%} | {draws} | {r['random_mean']:.0%} |"
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
