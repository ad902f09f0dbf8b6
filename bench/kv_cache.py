"""Needle accuracy vs KV memory: the full cache, HeadwiseCache under several head rankings, sink + window on
every head, and kvpress presses, at the same budgets on the same tests.

    bench/kvpress/setup.sh                                          # once: kvpress in its own .venv-kvpress
    python -m bench.kv_cache --model smollm2-135m --kvpress         # ~40 min on 2 CPU cores
    python -m bench.kv_cache --model gemma3-270m --no-context       # a model with only a retrieval map
    python -m bench.kv_cache --lengths 4000,8000 --needles 2 --budgets 0.3 --no-context --name kv_cache-8k
    python -m bench.kv_cache --book moby-dick --needle-range 13:27 --lengths 1200,2400,4000 --depths 0.25,0.75 \
        --budgets 0.3 --no-context --only full,headwise --name kv_cache-moby   # fresh needles and prose
    python -m bench.kv_cache --map mine=headmaps/mine.json --only mine                 # add a ranking

Rows: `full`; `headwise`, KV heads ranked by the shipped retrieval map; `headwise-gates`, by the shipped gate
map; `headwise-context`, by a context map profiled first on other needles and another book; `headwise-NAME`,
by the map of `--map NAME=PATH`; `window`, sink + window on every head; `kvpress-*`, kvpress run in
.venv-kvpress on the very same token ids, its answers scored here by the same rule. `--only A,B` reruns the
methods whose name holds A or B and keeps the other rows of the saved run. The default grid is
bench/grids.py's KV_CACHE. Writes bench/results/<model>/<--name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
from pathlib import Path

import headwise as hw
from bench.caches import extra_maps, result_row, run_cache, save_table, variant
from bench.common import command, merge_rows, results_dir
from bench.grids import KV_CACHE
from headwise.core.generate import MAX_NEW_TOKENS
from headwise.core.models import resolve
from headwise.core.needles import NeedleTest, is_correct
from headwise.core.policy import SINK, WINDOW
from headwise.core.prompts import reading_prompt
from headwise.errors import HeadwiseError
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import load_needles, make_tests, pick_needles

PRESSES = ("kvpress-streaming_llm", "kvpress-snapkv", "kvpress-adakv_snapkv", "kvpress-expected_attention")
KVPRESS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-kvpress" / "bin" / "python"


def main() -> None:
    """Profile the context map, run every method at every budget; save table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default=",".join(map(str, KV_CACHE.lengths)))
    which_needles = parser.add_mutually_exclusive_group()  # one of these chooses the needles, never two
    which_needles.add_argument(
        "--needles", type=int, default=KV_CACHE.needles, help="how many held-out needles (the list's last)"
    )
    which_needles.add_argument("--needle-range", help="START:STOP: needles of the shipped list, not the held-out ones")
    which_needles.add_argument("--needles-file", type=Path, help="JSON needles to use, all of them, not shipped ones")
    parser.add_argument("--book", default=KV_CACHE.haystack, help="haystack book (shipped name or a text file)")
    parser.add_argument("--depths", default=",".join(map(str, KV_CACHE.depths)))
    parser.add_argument("--seed", type=int, default=KV_CACHE.seed, help="where in the book each test's prose starts")
    parser.add_argument("--window", type=int, default=WINDOW, help="window of headwise's non-retrieval heads")
    parser.add_argument("--kvpress", action="store_true", help="also run kvpress presses (needs .venv-kvpress)")
    parser.add_argument("--budgets", default="0.2,0.3,0.5,0.7", help="KV budgets, fractions of the full cache")
    parser.add_argument("--name", default="kv_cache", help="file name of the results under bench/results/<model>/")
    parser.add_argument("--headmap", type=Path, help="retrieval head map (default: the one shipped for --model)")
    parser.add_argument("--no-context", action="store_true", help="skip the context-ranked variant and its profiling")
    parser.add_argument("--map", action="append", default=[], help="NAME=PATH: also rank KV heads by this head map")
    parser.add_argument(
        "--only", help="A,B: run only the methods whose name holds A or B; keep the saved rows of the others"
    )
    parser.add_argument("--reduce", default="max", help="KV head score from its query heads': max, or mean (-mean)")
    args = parser.parse_args()
    out = results_dir(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    budgets = [float(x) for x in args.budgets.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    model, tok = hw.load_model(args.model)
    if args.needles_file:
        needles, which = load_needles(args.needles_file), f"needles of {args.needles_file.name}"
    elif args.needle_range:
        start, stop = (int(x) for x in args.needle_range.split(":"))
        needles, which = load_needles()[start:stop], f"needles {start + 1}-{stop}"
    else:
        needles, which = pick_needles(load_needles(), args.needles, held_out=True), "held-out needles"
    tests = make_tests(tok, load_haystack(args.book), needles, lengths, depths, seed=args.seed)
    maps = {"headwise": hw.HeadMap.load(args.headmap, model) if args.headmap else hw.shipped_headmap(args.model)}
    if not args.headmap:
        with contextlib.suppress(HeadwiseError):  # the gate map, where one is shipped
            maps["headwise-gates"] = hw.shipped_headmap(args.model, "gates")
    maps |= extra_maps(args.map, model)
    wanted = args.only.split(",") if args.only else [""]

    def only(method: str) -> bool:
        return any(w in method for w in wanted)

    if not args.no_context and only("headwise-context"):
        calibration = make_tests(
            tok, load_haystack("pride-and-prejudice"), pick_needles(load_needles(), 4, False), lengths, [0, 0.5, 1]
        )
        maps["headwise-context"] = hw.profile(model, tok, calibration, "context", sink=SINK, window=args.window)
        maps["headwise-context"].save(out / "headmap-context.json")
    presses = args.kvpress and any(only(p) for p in PRESSES)
    pressed = run_kvpress(args.model, tok, tests, budgets) if presses else []  # first: fail fast without kvpress
    rows = [run_cache(model, tok, tests, "full", 1.0, None, 0)] if only("full") else []
    for budget in budgets:
        for method, headmap in maps.items():
            method = variant(method, args.reduce)
            if only(method):
                rows.append(run_cache(model, tok, tests, method, budget, headmap, args.window, args.reduce))
        if only("window"):
            rows.append(run_cache(model, tok, tests, "window", budget, None, 0))
    rows += [
        result_row(r["method"], r["budget"], None, r["correct"], r["kv_ratio"], r["seconds"])
        for r in pressed
        if only(r["method"])
    ]
    for row in rows:
        row["command"] = command()
    if args.only:  # the rows this run did not redo stay
        rows = merge_rows(out / f"{args.name}.json", rows, lambda r: (r["method"], r["budget"]))
        rows.sort(key=lambda r: (r["method"] != "full", r["method"].startswith("kvpress"), r["budget"]))
    doc = {
        "command": command(),
        "model": args.model,
        "lengths": lengths,
        "depths": depths,
        "needles": len(needles),
        "tests": f"{len(tests)} tests ({which}, {args.book})",
        "rows": rows,
    }
    report(doc, out / args.name)


def report(doc: dict, stem: Path) -> None:
    """Write <stem>.json, the markdown table and the plot; print the table."""
    about = (
        "Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in doc["rows"]))
        + f"; {doc['tests']}, lengths {doc['lengths']}, depths {doc['depths']}. "
        "Rows are described in bench/kv_cache.py and docs/kv-cache.md (`headwise-names`: the default ranking; "
        "`headwise-swapped`: the default until RULER, issue #23; `headwise-union`: the gates united with RULER answer "
        "attention, a candidate; `-mean`: KV heads scored by their query heads' mean). "
        "KV held is measured from the caches (kvpress: "
        "tokens kept after compression; AdaKV masks instead of dropping, so it holds everything). `least window` "
        "is what headwise's other heads keep at least; the budget its full heads leave widens it."
    )
    save_table(stem, doc, f"{doc['model']}: needle accuracy vs KV memory", about)
    plot(doc["rows"], stem.with_suffix(".png"), doc["model"])


def require_kvpress() -> None:
    """Stop with what to run when kvpress's environment is missing."""
    if not KVPRESS_PYTHON.exists():
        raise SystemExit(f"{KVPRESS_PYTHON} is missing; run bench/kvpress/setup.sh first")


def kvpress_presses() -> list[str]:
    """The presses bench/kvpress/run_presses.py runs (asked in .venv-kvpress, where they are defined)."""
    require_kvpress()
    runner = Path(__file__).parent / "kvpress" / "run_presses.py"
    done = subprocess.run([str(KVPRESS_PYTHON), str(runner), "--list"], check=True, capture_output=True, text=True)
    return done.stdout.split()


def answer_with_kvpress(spec: dict) -> dict:
    """kvpress's answers to the exported tests in `spec`, from bench/kvpress/run_presses.py run in .venv-kvpress."""
    require_kvpress()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "tests.json", Path(tmp) / "answers.json"
        spec_path.write_text(json.dumps(spec))
        runner = Path(__file__).parent / "kvpress" / "run_presses.py"
        subprocess.run([str(KVPRESS_PYTHON), str(runner), str(spec_path), str(out_path)], check=True)
        return json.loads(out_path.read_text())


def run_kvpress(model_name: str, tok, tests: list[NeedleTest], budgets: list[float]) -> list[dict]:
    """Export the tests as token ids, answer them with kvpress in its own environment, score here."""
    require_kvpress()
    exported = []
    for t in tests:
        tail = len(reading_prompt(tok, t.needle.question)[1])
        ids = t.ids.tolist()
        exported.append({"context_ids": ids[:-tail], "question_ids": ids[-tail:]})
    where, gguf_file = resolve(model_name)
    spec = {
        "model_dir": where,
        "gguf_file": gguf_file,
        "presses": PRESSES,
        "budgets": budgets,
        "max_new_tokens": MAX_NEW_TOKENS,
        "tests": exported,
    }
    answered = answer_with_kvpress(spec)
    for row in answered["rows"]:
        row["correct"] = [is_correct(t.needle, a) for t, a in zip(tests, row["answers"], strict=True)]
    return answered["rows"]


def plot(rows: list[dict], path: Path, model: str) -> None:
    """Accuracy against the KV budget, one line per method; the full cache and 95% of it as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "full"]
    for method in methods:
        pts = sorted((r["budget"], r["accuracy"]) for r in rows if r["method"] == method)
        style = "o-" if method.startswith("headwise") else "s--" if method == "window" else "x:"
        ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], style, label=method, markersize=7)
    full = next((r for r in rows if r["method"] == "full"), None)  # a run of variants only has no full row
    if full is not None:
        ax.axhline(100 * full["accuracy"], color="k", lw=1, label="full cache")
        ax.axhline(95 * full["accuracy"], color="k", lw=0.8, ls=":", label="95% of the full cache (goal at 30%)")
    ax.set_xlabel("KV budget (% of the full cache)")
    ax.set_ylabel("needle accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(-5, 105)
    ax.set_title(f"{model}: accuracy vs KV memory")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: clear of the lines
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
