"""Answering over inputs far beyond the window with the headwise reader.

    python -m bench.read_long --part main      # 32K, 128K: the plain model (its window) vs the reader
    python -m bench.read_long --part heads     # 32K: which heads select (retrieval / all / last layer)
    python -m bench.read_long --part units     # 32K: what is kept (sentence / block / token)
    python -m bench.read_long --part multi --pool mean   # 32K: four facts to collect (multi-value needle)
    python -m bench.read_long --part million   # 1M tokens at a few depths, once
    bench/infiniretri/setup.sh && python -m bench.read_long --part infiniretri   # 32K: vs InfiniRetri's package
    python -m bench.read_long --part main --lengths 32000 --needles 4 --only reader --limit 10 --name check
                                               # the first 10 tests of a committed run, saved apart

Held-out needles (the last of the shipped list; profiling used the first) in real prose from the
shipped books, bfloat16 on the CPU. Each part saves bench/results/<model>/reader/<part>.json; the
report reader.md and reader.png are rebuilt from every part saved so far.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import headwise as hw
from bench.common import command, merge_rows, results_dir, write_json
from headwise.apps.config import POOLS, ReaderConfig
from headwise.apps.spans import head_weights
from headwise.core.generate import MAX_NEW_TOKENS, greedy
from headwise.core.models import model_shape, resolve
from headwise.core.needles import NeedleTest, is_correct
from headwise.core.prompts import reading_prompt
from headwise.eval.haystack import load_haystack
from headwise.eval.niah import NiahResult, Outcome, evaluate, reader_answerer
from headwise.eval.tasks import context_text, load_needles, make_multi_test, make_tests, pick_needles

PARTS = ("main", "heads", "units", "multi", "million", "infiniretri")
INFINIRETRI_PYTHON = Path(__file__).parents[1] / ".venv-infiniretri" / "bin" / "python"
INFINIRETRI_SETTINGS = {"window_length": 1024, "topk": 300, "answer_length": 8}  # the package's defaults


def infiniretri(model_name: str, dtype: str, tok, tests: list[NeedleTest]) -> NiahResult:
    """Answer `tests` with InfiniRetri's own package in its environment, on the same context text."""
    if not INFINIRETRI_PYTHON.is_file():
        raise SystemExit("InfiniRetri's environment is missing: run bench/infiniretri/setup.sh first")
    where, gguf = resolve(model_name)
    exported = [{"context": context_text(tok, t), "question": t.needle.question} for t in tests]
    spec = {
        "model_dir": where,
        "gguf_file": gguf,
        "dtype": dtype,
        "settings": INFINIRETRI_SETTINGS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "tests": exported,
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tests.json").write_text(json.dumps(spec))
        script = Path(__file__).parent / "infiniretri" / "run_infiniretri.py"
        subprocess.run([INFINIRETRI_PYTHON, script, Path(tmp) / "tests.json", Path(tmp) / "answers.json"], check=True)
        answers = json.loads((Path(tmp) / "answers.json").read_text())
    outcomes = [
        Outcome(
            t.length,
            t.depth,
            t.needle.question,
            t.needle.answer,
            a["response"],
            is_correct(t.needle, a["response"]),
            seconds=a["seconds"],
            kept_needle=None,
        )
        for t, a in zip(tests, answers, strict=True)
    ]
    return NiahResult(model_name, outcomes)


def plain_window(model, tok):
    """Baseline: the plain model given as much of the input as its window holds (the end of it)."""
    room = model_shape(model).max_positions - MAX_NEW_TOKENS

    def respond(test: NeedleTest) -> Outcome:
        prefix, suffix = reading_prompt(tok, test.needle.question)
        context = test.ids[len(prefix) : len(test.ids) - len(suffix)]
        cut = max(0, len(context) - (room - len(prefix) - len(suffix)))
        began = time.perf_counter()
        response = greedy(model, tok, torch.cat([test.ids[: len(prefix)], context[cut:], test.ids[-len(suffix) :]]))
        return Outcome(
            test.length,
            test.depth,
            test.needle.question,
            test.needle.answer,
            response,
            is_correct(test.needle, response),
            seconds=round(time.perf_counter() - began, 2),
            kept_needle=test.span[0] - len(prefix) >= cut,
        )

    return respond


def summary(result: NiahResult, method: str, length: int) -> dict:
    """One table row: accuracy, how often the needle survived selection, time and throughput."""
    seconds = [o.seconds for o in result.outcomes]
    kept = [o.kept_needle for o in result.outcomes]
    return {
        "method": method,
        "length": length,
        "correct": sum(o.correct for o in result.outcomes),
        "tests": len(result.outcomes),
        "accuracy": result.accuracy,
        "kept_needle": None if kept[0] is None else float(np.mean(kept)),
        "seconds_per_test": round(float(np.mean(seconds)), 1),
        "tokens_per_second": round(length / float(np.mean(seconds))),
        "outcomes": [vars(o) for o in result.outcomes],
    }


def main() -> None:
    """Run one part and rebuild the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--haystack", default="moby-dick")
    parser.add_argument("--needles", type=int, default=2)
    parser.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    parser.add_argument("--lengths", help="override the part's lengths")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--keep", type=int, default=256)
    parser.add_argument(
        "--pool", choices=POOLS, default=ReaderConfig.pool, help="how a sentence's token scores combine"
    )
    parser.add_argument(
        "--focus", type=float, default=ReaderConfig.focus, help="answer from passages this close to the best"
    )
    parser.add_argument("--only", help="run only the part's methods whose name holds this; the others' rows stay")
    parser.add_argument("--limit", type=int, help="only the first N tests of each length (a check of a saved run)")
    parser.add_argument("--name", help="save as <part>-<name>.json instead of <part>.json")
    args = parser.parse_args()

    model, tok = hw.load_model(args.model, args.dtype)
    headmap = hw.shipped_headmap(args.model)
    book = load_haystack(args.haystack)
    depths = [float(d) for d in args.depths.split(",")]
    default_lengths = {"main": "32000,128000", "million": "1000000"}.get(args.part, "32000")
    lengths = [int(n) for n in (args.lengths or default_lengths).split(",")]
    needles = pick_needles(load_needles(), args.needles, held_out=True)
    options = {
        "chunk": args.chunk,
        "keep": args.keep,
        "unit": "sentence",
        "pool": args.pool,
        "focus": args.focus,
    }
    retrieval = head_weights(model, headmap, "5%")
    last = np.zeros_like(retrieval)
    last[-1] = 1.0

    methods: dict[str, tuple] = {}
    if args.part == "main":
        methods = {"plain model, its window": (plain_window(model, tok),), "headwise reader": (retrieval, options)}
    elif args.part == "heads":
        methods = {
            "retrieval heads (top 5%)": (retrieval, options),
            "all heads": (head_weights(model, None), options),
            "last layer (as InfiniRetri)": (last, options),
        }
    elif args.part == "infiniretri":
        methods = {"headwise reader": (retrieval, options), "InfiniRetri (infini-retri 0.0.3)": ()}
    elif args.part == "units":
        methods = {f"unit: {u}": (retrieval, {**options, "unit": u}) for u in ("sentence", "block", "token")}
    else:
        methods = {"headwise reader": (retrieval, options)}

    order = list(methods)  # the table's row order, whatever --only runs
    if args.only:
        methods = {name: spec for name, spec in methods.items() if args.only in name}
    rows = []
    for length in lengths:
        if args.part == "multi":
            tests = [make_multi_test(tok, book, 4, length, start=97 * s, seed=s) for s in range(len(depths))]
        else:
            tests = make_tests(tok, book, needles, [length], depths)
        tests = tests[: args.limit]
        for name, spec in methods.items():
            began = time.perf_counter()
            if not spec:
                result = infiniretri(args.model, args.dtype, tok, tests)
            else:
                answer = spec[0] if len(spec) == 1 else reader_answerer(model, tok, spec[0], ReaderConfig(**spec[1]))
                result = NiahResult(args.model, evaluate(model, tok, tests, answer, desc=name))
            row = summary(result, name, length)
            row["options"] = spec[1] if len(spec) == 2 else None
            rows.append(row)
            sys.stderr.write(
                f"{length:>8} {name:32} {row['correct']}/{row['tests']} kept {row['kept_needle']} "
                f"{row['seconds_per_test']} s/test {row['tokens_per_second']} tok/s "
                f"({time.perf_counter() - began:.0f} s)\n"
            )
    out = results_dir(args.model, "reader")
    saved = out / (f"{args.part}-{args.name}.json" if args.name else f"{args.part}.json")
    for row in rows:
        row["command"] = command()
    rows = merge_rows(saved, rows, lambda r: (r["method"], r["length"]))  # runs at other lengths keep their rows
    rows.sort(key=lambda r: (r["length"], order.index(r["method"]) if r["method"] in order else len(order)))
    commands = list(dict.fromkeys(r["command"] for r in rows))  # the runs behind the rows still here
    doc = {
        "commands": commands,
        "model": args.model,
        "dtype": args.dtype,
        "haystack": args.haystack,
        "needles": [n.question for n in needles] if args.part != "multi" else "multi_needle(4, seed)",
        "depths": depths,
        "options": options,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }
    write_json(saved, doc)
    sys.stdout.write(report(out))


def report(folder: Path) -> str:
    """Rebuild reader.md and reader.png from every saved part; return the markdown."""
    lines = ["# headwise reader: needles beyond the window", ""]
    parts = {p: json.loads((folder / f"{p}.json").read_text()) for p in PARTS if (folder / f"{p}.json").is_file()}
    for part, doc in parts.items():
        lines += [
            f"## {part}",
            "",
            ", ".join(f"`{c}`" for c in doc["commands"]),
            "",
            f"{doc['model']}, {doc['dtype']}, {doc['haystack']}, depths {doc['depths']}, "
            f"chunk {doc['options']['chunk']}, keep {doc['options']['keep']}, "
            f"{doc['options'].get('pool', 'sum')} pooling, "
            f"focus {doc['options'].get('focus', 'none (the earlier answer step)')}, {doc['torch_threads']} threads.",
            "",
            "| length | method | correct | needle kept | s / test | input tokens / s |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['length']:,} | {r['method']} | {r['correct']}/{r['tests']} | {_share(r['kept_needle'])} | "
                f"{r['seconds_per_test']} | {r['tokens_per_second']:,} |"
                for r in doc["rows"]
            ],
            "",
        ]
    text = "\n".join(lines)
    (folder / "reader.md").write_text(text)
    if "main" in parts:  # accuracy against length, with the 1M run on the reader's line where there is one
        plot(parts["main"]["rows"] + parts.get("million", {}).get("rows", []), folder / "reader.png")
    return text


def _share(value: float | None) -> str:
    """A share as a percentage, or a dash where it was not measured."""
    return "–" if value is None else f"{value:.0%}"


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against input length, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ax.plot([r["length"] for r in mine], [r["accuracy"] for r in mine], "o-", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("input tokens")
    ax.set_ylabel("needle accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
