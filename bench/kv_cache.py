"""Benchmark for issue #3: needle accuracy vs KV memory for the full cache, HeadwiseCache (several head
rankings), sink + window on every head, and kvpress presses, at the same budgets on the same tests.

    bench/kvpress/setup.sh                                       # once: kvpress in its own .venv-kvpress
    python bench/kv_cache.py --model smollm2-135m --kvpress      # ~40 min on 2 CPU cores
    python bench/kv_cache.py --model gemma3-270m --headmap bench/results/gemma3-270m/headmap-frankenstein.json \
        --no-context                                             # a model without a shipped map
    python bench/kv_cache.py --lengths 4000,8000 --needles 2 --budgets 0.3 --no-context --name kv_cache-8k
    python bench/kv_cache.py --lengths 1200,2400,4000 --depths 0.1,0.3,0.5,0.7,0.9 --budgets 0.3 --no-context \
        --map gates=bench/results/smollm2-135m/headmap-gates-1.0.json --name kv_cache-45  # 45 tests at 30%
    python bench/kv_cache.py --book moby-dick --needle-range 13:27 --lengths 1200,2400,4000 --depths 0.25,0.75 \
        --budgets 0.3 --no-context --only full,headwise --name kv_cache-moby   # fresh needles and prose
    python bench/kv_cache.py --map mine=headmaps/mine.json --only mine                 # add a ranking

HeadwiseCache ranks KV heads by the shipped retrieval map, by the shipped gate map as trained (caches by
default also order its zero-gate heads by the retrieval map, `headmap.cache_headmap`; the committed
`headwise-gates` rows are the needles-only gates shipped before the made-up-name gates, whose tie-broken form
is rows `headwise-names`; the default now, that map with 3 pairs of KV heads swapped by bench/kv_swaps.py, is
rows `headwise-swapped`), by a context map (how much each head's
output changes under sink + window) that this script profiles first on needles and a book that the
evaluation does not use, and by any head map given as `--map NAME=PATH` (method `headwise-NAME`).
`--only A,B` runs the methods whose name holds A or B and keeps the other rows of an earlier run. kvpress
runs in .venv-kvpress on the very same token ids; its answers are scored here by the same rule.
Writes bench/results/<model>/<--name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headwise.cache import WINDOW, cache_factory
from headwise.errors import HeadwiseError
from headwise.generate import MAX_NEW_TOKENS
from headwise.haystack import load_haystack
from headwise.headmap import HeadMap, shipped_headmap
from headwise.models import load_model, resolve
from headwise.niah import run_niah
from headwise.profile import profile_context
from headwise.tasks import NeedleTest, is_correct, load_needles, make_tests, pick_needles, prompt_parts

SINK = 4
PRESSES = ("kvpress-streaming_llm", "kvpress-snapkv", "kvpress-adakv_snapkv", "kvpress-expected_attention")
KVPRESS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-kvpress" / "bin" / "python"


def main() -> None:
    """Profile the context map, run every method at every budget; save table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1200,2400")
    which_needles = parser.add_mutually_exclusive_group()  # one of these chooses the needles, never two
    which_needles.add_argument("--needles", type=int, default=3, help="how many held-out needles (the list's last)")
    which_needles.add_argument("--needle-range", help="START:STOP: needles of the shipped list, not the held-out ones")
    which_needles.add_argument("--needles-file", type=Path, help="JSON needles to use, all of them, not shipped ones")
    parser.add_argument("--book", default="frankenstein", help="haystack book (shipped name or a text file)")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--seed", type=int, default=3, help="chooses where in the book each test's prose starts")
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
    out = Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",")]
    budgets = [float(x) for x in args.budgets.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    model, tok = load_model(args.model)
    if args.needles_file:
        needles, which = load_needles(args.needles_file), f"needles of {args.needles_file.name}"
    elif args.needle_range:
        start, stop = (int(x) for x in args.needle_range.split(":"))
        needles, which = load_needles()[start:stop], f"needles {start + 1}-{stop}"
    else:
        needles, which = pick_needles(load_needles(), args.needles, held_out=True), "held-out needles"
    tests = make_tests(tok, load_haystack(args.book), needles, lengths, depths, seed=args.seed)
    maps = {"headwise": HeadMap.load(args.headmap, model) if args.headmap else shipped_headmap(args.model)}
    if not args.headmap:
        with contextlib.suppress(HeadwiseError):  # the ranking caches use by default, where one is shipped
            maps["headwise-gates"] = shipped_headmap(args.model, "gates")
    maps |= extra_maps(args.map, model)
    wanted = args.only.split(",") if args.only else [""]

    def only(method: str) -> bool:
        return any(w in method for w in wanted)

    if not args.no_context and only("headwise-context"):
        calibration = make_tests(
            tok, load_haystack("pride-and-prejudice"), pick_needles(load_needles(), 4, False), lengths, [0, 0.5, 1]
        )
        maps["headwise-context"] = profile_context(model, tok, calibration, sink=SINK, window=args.window)
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
    command = command_line("kv_cache.py")
    for row in rows:
        row["command"] = command
    saved = out / f"{args.name}.json"
    if args.only and saved.is_file():  # the rows this run did not redo stay, in their place
        fresh = {(r["method"], r["budget"]) for r in rows}
        old = json.loads(saved.read_text())
        kept = [r for r in old["rows"] if (r["method"], r["budget"]) not in fresh]
        for row in kept:
            row.setdefault("command", old["command"])
        rows = sorted(
            kept + rows, key=lambda r: (r["method"] != "full", r["method"].startswith("kvpress"), r["budget"])
        )
    doc = {
        "command": command,
        "model": args.model,
        "lengths": lengths,
        "depths": depths,
        "needles": len(needles),
        "tests": f"{len(tests)} tests ({which}, {args.book})",
        "rows": rows,
    }
    report(doc, out / args.name)


def run_cache(
    model,
    tok,
    tests: list[NeedleTest],
    method: str,
    budget: float,
    headmap: HeadMap | None,
    window: int,
    reduce: str = "max",
) -> dict:
    """Answer `tests` with one cache method (full, headwise or headwise-<variant>, window) at `budget`: a row.
    `reduce` is how headwise scores a KV head from its query heads: max or mean."""
    began = time.perf_counter()
    kind = "headwise" if method.startswith("headwise") else method
    make_cache = cache_factory(model, kind, budget, headmap, SINK, window, reduce)
    result = run_niah(model, tok, tests, make_cache=make_cache)
    correct = [o.correct for o in result.outcomes]
    row = result_row(method, budget, window, correct, result.kv_ratio, time.perf_counter() - began)
    missed = [f"{o.length} tokens, depth {o.depth}: {o.question}" for o in result.outcomes if not o.correct]
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


def command_line(script: str) -> str:
    """How this run of bench/`script` was started, stored beside its results."""
    return shlex.join(["python", f"bench/{script}", *sys.argv[1:]])


def extra_maps(specs: list[str], model) -> dict[str, HeadMap]:
    """`--map NAME=PATH` arguments as {"headwise-NAME": head map}."""
    maps = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        maps[f"headwise-{name}"] = HeadMap.load(path, model)
    return maps


def variant(method: str, reduce: str) -> str:
    """A headwise row's name: "-mean" added when KV heads are scored by their query heads' mean, not the max."""
    return method + ("-mean" if reduce == "mean" else "")


def save_table(stem: Path, doc: dict, heading: str, about: str) -> None:
    """Write <stem>.json and <stem>.md (heading, what was run, the rows' table); print the markdown."""
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [f"# {heading}", "", about, "", *table(doc["rows"])]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


def report(doc: dict, stem: Path) -> None:
    """Write <stem>.json, the markdown table and the plot; print the table."""
    about = (
        "Commands: "
        + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in doc["rows"]))
        + f"; {doc['tests']}, lengths {doc['lengths']}, "
        f"depths {doc['depths']}. `headwise` ranks KV heads by the shipped retrieval map, `headwise-gates` by "
        "the shipped gate map as trained (every such row committed so far: the needles-only gates "
        "headmap-gates-1.0.json, shipped until the gates trained with made-up names replaced them; rows "
        "`headwise-ties`: its zero gates ordered by the retrieval map; rows `headwise-names`: the default until "
        "kv_swaps.py, headmap-gates-names-ties-1.0.json; rows `headwise-swapped`: the default now, that map with "
        "3 pairs of KV heads swapped, headmap-gates-swapped.json), `headwise-context` by "
        "a context map profiled on other needles and another book, `headwise-NAME` by the map given as "
        "`--map NAME=PATH`; a `-mean` suffix scores KV heads by their query heads' mean (`--reduce mean`), "
        "not the max. "
        "KV held is measured from the caches "
        "(for kvpress: tokens kept after compression; AdaKV masks instead of dropping, so it holds everything). "
        "`least window` is what headwise's other heads keep at least; the budget its full heads leave widens it."
    )
    save_table(stem, doc, f"{doc['model']}: needle accuracy vs KV memory", about)
    plot(doc["rows"], stem.with_suffix(".png"), doc["model"])


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


def run_kvpress(model_name: str, tok, tests: list[NeedleTest], budgets: list[float]) -> list[dict]:
    """Export the tests as token ids, answer them with kvpress in its own environment, score here."""
    if not KVPRESS_PYTHON.exists():
        raise SystemExit(f"{KVPRESS_PYTHON} is missing; run bench/kvpress/setup.sh first")
    exported = []
    for t in tests:
        tail = len(prompt_parts(tok, t.needle.question)[1])
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
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "tests.json", Path(tmp) / "answers.json"
        spec_path.write_text(json.dumps(spec))
        runner = Path(__file__).parent / "kvpress" / "run_presses.py"
        subprocess.run([str(KVPRESS_PYTHON), str(runner), str(spec_path), str(out_path)], check=True)
        answered = json.loads(out_path.read_text())
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
    full = next(r for r in rows if r["method"] == "full")
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
