"""Tuning bench for the reader's answer step, on development needles only.

    python -m bench.reader_answer --length 32000   # read each test once (about 20 min), then compare answer steps
    python -m bench.reader_answer --length 3000    # the same at 3K tokens (a few minutes)

The reader's misses on the held-out benchmark (bench/read_long.py) kept the needle but garbled the
answer. Re-running a 32K read per idea costs half a minute a test, so this bench reads each
development test once (needles 5-20 of the shipped list, *Frankenstein* and *Pride and Prejudice*,
never the held-out needles or *Moby-Dick*), saves the units the reader kept with their scores
(dev_selections-<length>.json), and answers from them with each variant of the answer prompt in
seconds. Results: answer_steps-<length>.json, answer_steps.md and answer_steps.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

import headwise as hw
from bench.common import command, results_dir
from headwise.apps.reader import Selection, answer_prompt, select
from headwise.apps.spans import head_weights
from headwise.core.generate import greedy
from headwise.core.needles import Needle, is_correct
from headwise.core.prompts import reading_prompt
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import context_text, load_needles, make_test

DEV_NEEDLES = slice(5, 21)  # profiling used needles 0-4; read_long.py holds out the last four
DEV_BOOKS = ("frankenstein", "pride-and-prejudice")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def collect(model, tok, model_name: str, length: int, path: Path) -> list[dict]:
    """Read every development test once with the default reader; save and return the units it kept and their scores."""
    weights = head_weights(model, hw.shipped_headmap(model_name), "5%")
    rng = random.Random(0)
    tests = []
    for book_name in DEV_BOOKS:
        book = load_haystack(book_name)
        sentences = book.num_sentences(tok)
        for i, needle in enumerate(load_needles()[DEV_NEEDLES]):
            depth = DEPTHS[(i + len(tests)) % len(DEPTHS)]
            tests.append((book_name, make_test(tok, book, needle, length, depth, rng.randrange(sentences))))
    rows = []
    for n, (book_name, test) in enumerate(tests, 1):
        began = time.perf_counter()
        selection = select(model, tok, context_text(tok, test), test.needle.question, weights, progress=False)
        rows.append(
            {
                "book": book_name,
                "depth": test.depth,
                "needle": test.needle.needle,
                "question": test.needle.question,
                "answer": test.needle.answer,
                "units": [u.tolist() for u in selection.units],
                "starts": selection.starts.tolist(),
                "scores": selection.scores.tolist(),
            }
        )
        sys.stderr.write(f"{n}/{len(tests)} {book_name} {test.needle.answer!r}: {time.perf_counter() - began:.0f} s\n")
    path.write_text(json.dumps({"model": model_name, "length": length, "tests": rows}))
    return rows


VARIANTS = {  # name: answer_prompt options
    "units by score, no separator (before)": {"separator": "", "merge": False, "focus": 0.0},
    "passages by score, newline": {"focus": 0.0},
    "passages in input order, newline": {"order": "input", "focus": 0.0},
    **{f"passages by score, newline, focus {f:g}": {"focus": f} for f in (0.25, 0.5, 0.75)},
}


def variants(tok, model, tests: list[dict]) -> list[dict]:
    """Each answer step's row: its responses to the saved selections, how many are right, and how often
    the needle was still in the prompt it answered from."""
    rows = []
    for name, options in VARIANTS.items():
        responses, right, held = [], 0, 0
        for t in tests:
            prefix, suffix = reading_prompt(tok, t["question"])
            units = [np.asarray(u, dtype=np.int64) for u in t["units"]]
            chars = np.zeros((len(units), 2), dtype=np.int64)
            selection = Selection(prefix, suffix, units, np.asarray(t["starts"]), np.asarray(t["scores"]), chars, 0, 0)
            prompt, _ = answer_prompt(selection, tok, **options)
            responses.append(greedy(model, tok, prompt))
            right += is_correct(Needle(t["needle"], t["question"], t["answer"]), responses[-1])
            held += t["needle"] in tok.decode(prompt)
        rows.append(
            {
                "variant": name,
                "options": options,
                "correct": right,
                "needle_in_prompt": held,
                "tests": len(tests),
                "responses": responses,
            }
        )
        sys.stderr.write(f"{name}: {right}/{len(tests)}\n")
    return rows


def report(folder: Path) -> str:
    """Rebuild answer_steps.md and answer_steps.png from every length measured; return the markdown."""
    docs = sorted((json.loads(f.read_text()) for f in folder.glob("answer_steps-*.json")), key=lambda d: d["length"])
    lines = [
        "# Reader answer step on development needles",
        "",
        "Needles 5-20 of the shipped list in *Frankenstein* and *Pride and Prejudice* (held-out needles and",
        "*Moby-Dick* never used), one depth per test; the same kept units answered by each variant.",
        "",
        "| variant | " + " | ".join(f"{d['length']:,} tokens: correct (needle in prompt)" for d in docs) + " |",
        "|---|" + "---|" * len(docs),
    ]
    for i, row in enumerate(docs[0]["rows"]):
        cells = [
            f"{d['rows'][i]['correct']}/{d['rows'][i]['tests']} ({d['rows'][i]['needle_in_prompt']})" for d in docs
        ]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- `{d['command']}`" for d in docs), ""]
    text = "\n".join(lines)
    (folder / "answer_steps.md").write_text(text)
    plot(docs, folder / "answer_steps.png")
    return text


def plot(docs: list[dict], path: Path) -> None:
    """Accuracy of each answer-step variant, one bar per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in docs[0]["rows"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    height = 0.8 / len(docs)
    for k, d in enumerate(docs):
        ys = np.arange(len(names)) + k * height
        ax.barh(ys, [r["correct"] / r["tests"] for r in d["rows"]], height, label=f"{d['length']:,} tokens")
    ax.set_yticks(np.arange(len(names)) + 0.4 - height / 2, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share answered correctly")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(docs), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Collect the selections (once per length), answer them with each answer step, rebuild the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--length", type=int, default=32000)
    args = parser.parse_args()
    model, tok = hw.load_model(args.model, args.dtype)
    out = results_dir(args.model, "reader")
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"dev_selections-{args.length}.json"
    if saved.is_file():
        tests = json.loads(saved.read_text())["tests"]
    else:
        tests = collect(model, tok, args.model, args.length, saved)
    doc = {
        "command": command(),
        "model": args.model,
        "dtype": args.dtype,
        "length": args.length,
        "tests": [{k: v for k, v in t.items() if k not in ("units", "starts", "scores")} for t in tests],
        "rows": variants(tok, model, tests),
    }
    (out / f"answer_steps-{args.length}.json").write_text(json.dumps(doc, indent=1))
    sys.stdout.write(report(out))


if __name__ == "__main__":
    main()
