"""The rows every cache benchmark shares: answer needle tests with one cache method at one budget, and the
markdown table of rows with the tests each lost and won against the full cache."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import headwise as hw
from bench.common import write_json, write_markdown
from headwise.core.needles import NeedleTest
from headwise.core.policy import SINK, WINDOW, CachePolicy
from headwise.eval.niah import NiahResult, cache_answerer, evaluate, policy_caches


def run_cache(
    model,
    tok,
    tests: list[NeedleTest],
    method: str,
    budget: float,
    headmap: hw.HeadMap | None,
    window: int,
    reduce: str = "max",
) -> dict:
    """Answer `tests` with one cache method (full, headwise or headwise-<variant>, window) at `budget`: a row.
    `reduce` is how headwise scores a KV head from its query heads: max or mean."""
    began = time.perf_counter()
    kind = "headwise" if method.startswith("headwise") else method
    policy = CachePolicy(kind, budget, SINK, window or WINDOW, reduce)
    outcomes = evaluate(
        model, tok, tests, cache_answerer(model, tok, policy_caches(model, policy, headmap)), desc=method
    )
    correct = [o.correct for o in outcomes]
    kv_ratio = NiahResult(method, outcomes).kv_ratio
    row = result_row(method, budget, window, correct, kv_ratio, time.perf_counter() - began)
    missed = [f"{o.length} tokens, depth {o.depth}: {o.question}" for o in outcomes if not o.correct]
    return row | {"missed": missed}  # which tests failed, to compare methods test by test


def result_row(method: str, budget: float, window: int | None, correct: list[bool], kv: float, seconds: float) -> dict:
    """One row of the accuracy-vs-KV table, also written to stderr as it lands."""
    sys.stderr.write(f"{method:28} budget {budget:.0%}: {sum(correct)}/{len(correct)}, KV {kv:.0%}\n")
    return {
        "method": method,
        "budget": budget,
        "window": window,
        "accuracy": sum(correct) / len(correct),
        "correct": sum(correct),
        "tests": len(correct),
        "kv_ratio": kv,
        "seconds": round(seconds, 1),
    }


def extra_maps(specs: list[str], model) -> dict[str, hw.HeadMap]:
    """`--map NAME=PATH` arguments as {"headwise-NAME": head map}."""
    maps = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        maps[f"headwise-{name}"] = hw.HeadMap.load(path, model)
    return maps


def variant(method: str, reduce: str) -> str:
    """A headwise row's name: "-mean" added when KV heads are scored by their query heads' mean, not the max."""
    return method + ("-mean" if reduce == "mean" else "")


def save_table(stem: Path, doc: dict, heading: str, about: str) -> None:
    """Write <stem>.json and <stem>.md (heading, what was run, the rows' table); print the markdown."""
    write_json(stem.with_suffix(".json"), doc)
    write_markdown(stem.with_suffix(".md"), heading, about, table(doc["rows"]))


def table(rows: list[dict]) -> list[str]:
    """The markdown table of result rows: accuracy and KV held per method, budget and least window; with
    the tests each row missed recorded, also how many tests it lost and won against the full cache (paired)."""
    full = next((r for r in rows if r["method"] == "full"), {})
    paired = "missed" in full
    return [
        "| method | budget | least window | accuracy | KV held | seconds |" + (" lost / won vs full |" * paired),
        "|---|---|---|---|---|---|" + ("---|" * paired),
        *[
            f"| {r['method']} | {r['budget']:.0%} | {r['window'] or ''} | {r['correct']}/{r['tests']} | "
            f"{r['kv_ratio']:.0%} | {r['seconds']} |" + (f" {versus(r, full)} |" if paired else "")
            for r in rows
        ],
    ]


def versus(row: dict, full: dict) -> str:
    """How many tests `row` missed that the full cache answered, and answered that the full cache missed."""
    if row is full or "missed" not in row:
        return ""
    missed, full_missed = set(row["missed"]), set(full["missed"])
    return f"{len(missed - full_missed)} / {len(full_missed - missed)}"
