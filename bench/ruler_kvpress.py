"""kvpress's presses on the very RULER samples a saved `bench.ruler` run answered, side by side with it.

    bench/kvpress/setup.sh                                            # once: kvpress in .venv-kvpress
    python -m bench.ruler_kvpress --run ruler-4096 --samples 2 --presses snapkv,streaming_llm --budgets 0.3
    python -m bench.ruler_kvpress --run ruler-4096 --samples 2 --presses tova --budgets 0.1,0.5 --add

The samples come from the run's own settings (same seed, same cached generator output), exported as token
ids: the prompt up to the end of RULER's context is kvpress's context (compressed during prefill), the rest
(question, chat template's end, RULER's answer prefix) its question. kvpress answers greedily in its own
environment (bench/kvpress/run_presses.py, RULER's generation length per task); answers are scored here
by RULER's metric. Writes bench/results/<model>/ruler/<run>-kvpress.{json,md,png}: the run's rows for the
same samples plus the presses' (with --add, plus the press rows already saved there that this call does not
redo; each row's command is kept in the JSON's settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from bench.common import command as this_command
from bench.common import results_dir
from bench.kv_cache import answer_with_kvpress, kvpress_presses
from bench.ruler import PRESS_COLUMNS, write
from headwise.core.models import resolve
from headwise.core.prompts import encode
from headwise.eval import ruler_data
from headwise.eval.ruler import RulerOutcome, RulerResult, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--run", default="ruler-4096", help="a saved bench.ruler run (its name)")
    parser.add_argument("--samples", type=int, default=None, help="the first N samples of each task")
    parser.add_argument("--tasks", default=None, help="a subset of the run's tasks")
    parser.add_argument("--presses", default="streaming_llm,snapkv,expected_attention,tova,adakv_snapkv")
    parser.add_argument("--budgets", default="0.3")
    parser.add_argument("--dtype", default=None, help="kvpress's dtype (default: the run's)")
    parser.add_argument("--name", default=None, help="results file name (default: <run>-kvpress)")
    parser.add_argument("--add", action="store_true", help="add these rows to the saved file's press rows")
    parser.add_argument(
        "--question-in-context", action="store_true",
        help="compress the whole prompt but its last token (the question too), as headwise's caches do",
    )  # fmt: skip
    args = parser.parse_args()
    name = args.name or f"{args.run}-kvpress"
    presses = [f"kvpress-{p}" for p in args.presses.split(",")]
    runnable = kvpress_presses()  # before the samples are made
    if unknown := [p.removeprefix("kvpress-") for p in presses if p not in runnable]:
        known = ", ".join(p.removeprefix("kvpress-") for p in runnable)
        raise SystemExit(f"error: unknown press {', '.join(unknown)}; bench/kvpress/run_presses.py runs {known}")
    out = results_dir(args.model, "ruler")
    run = json.loads((out / f"{args.run}.json").read_text())
    settings = run["settings"]
    if "parts" in settings:
        raise SystemExit(f"error: run {args.run} is merged from other runs; run kvpress on each part, then merge")
    tasks = args.tasks.split(",") if args.tasks else settings["tasks"]
    count = min(args.samples or settings["samples"], settings["samples"])
    where, gguf = resolve(args.model)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(where)
    samples = [
        s
        for n in settings["lengths"]
        for t in tasks
        for s in ruler_data.generate(tokenizer, t, n, settings["samples"], settings["seed"], args.model)[:count]
    ]
    tests = [{**split(tokenizer, s, args.question_in_context), "max_new_tokens": s.max_new_tokens} for s in samples]
    spec = {
        "model_dir": where, "gguf_file": gguf, "presses": presses,
        "budgets": [float(b) for b in args.budgets.split(",")], "max_new_tokens": 128, "tests": tests,
        "dtype": args.dtype or settings["dtype"],
    }  # fmt: skip
    keys = {(s.task, s.length, s.index) for s in samples}
    question = "in the compressed context" if args.question_in_context else "after compression"
    # press row -> the command that made it; --add's file is checked before kvpress runs
    earlier, rows = earlier_presses(out / f"{name}.json", keys, question) if args.add else ([], {})
    outcomes = [RulerOutcome(**o) for o in run["outcomes"] if (o["task"], o["length"], o["index"]) in keys]
    # a press's KV held, in bytes of the sample's full cache (the share is of the context's entries, kvpress's count)
    full_bytes = {(o.task, o.length, o.index): o.full_kv_bytes for o in outcomes if o.method == "full"}
    if set(full_bytes) != keys:
        raise SystemExit(f"error: run {args.run} has no full-cache answers to set the presses against; "
                         "name a saved bench.ruler cache run")  # fmt: skip
    answered = answer_with_kvpress(spec)
    redone = {f"{a['method']}-{a['budget']:.0%}" for a in answered["rows"]}
    rows = {m: r for m, r in rows.items() if m not in redone}
    outcomes += [o for o in earlier if o.method in rows]
    command = this_command()
    for row in answered["rows"]:
        method = f"{row['method']}-{row['budget']:.0%}"
        rows[method] = {"command": command}
        per = row["seconds"] / len(samples)
        for s, t, answer, share in zip(samples, tests, row["answers"], row["held"], strict=True):
            tokens = len(t["context_ids"]) + len(t["question_ids"])
            full = full_bytes[(s.task, s.length, s.index)]
            outcomes.append(RulerOutcome(
                s.task, s.length, s.index, method, answer, s.outputs, score(s.task, answer, s.outputs), tokens, 0,
                round(per, 2), kv_bytes=round(share * full), full_kv_bytes=full,
            ))  # fmt: skip
    kept = {**settings, "samples": count, "tasks": tasks, "kvpress": answered["kvpress_version"],
            "kvpress_dtype": spec["dtype"], "kvpress_rows": rows, "kvpress_question": question}  # fmt: skip
    others = sorted({r["command"] for r in rows.values()} - {command})
    note = (
        f" kvpress {answered['kvpress_version']} rows: its own prefill and pipeline per sample (context = "
        + (
            "the whole prompt but its last token: the presses see the question before they compress"
            if args.question_in_context
            else "the prompt up to the end of RULER's context"
        )
        + "), "
        + PRESS_COLUMNS
        + "".join(f" Rows added earlier by `{c}`." for c in others)
    )
    write(RulerResult(run["model"], outcomes, kept), out, name, note, command)


def split(tokenizer, sample, question_in_context: bool) -> dict:
    """kvpress's context (compressed during its prefill) and question (answered after) as token ids: by default
    RULER's context, then the rest of the prompt; with `question_in_context`, all of the prompt but its last
    token, so the presses see the question before they compress, as the headwise caches (filled from the full
    prompt's prefill) do."""
    if question_in_context:
        ids = encode(tokenizer, sample.prompt)
        return {"context_ids": ids[:-1], "question_ids": ids[-1:]}
    end = sample.context[1]
    return {"context_ids": encode(tokenizer, sample.prompt[:end]),
            "question_ids": encode(tokenizer, sample.prompt[end:])}  # fmt: skip


def earlier_presses(path: Path, keys: set, question: str) -> tuple[list[RulerOutcome], dict]:
    """The press outcomes and rows of a saved kvpress file, which must hold the same samples and put the
    question in the same place (for --add)."""
    if not path.exists():
        raise SystemExit(f"error: --add needs a saved {path}; run once without --add first")
    doc = json.loads(path.read_text())
    rows = doc["settings"].get("kvpress_rows")
    saved = {(o["task"], o["length"], o["index"]) for o in doc["outcomes"]}
    if rows is None or saved != keys or doc["settings"].get("kvpress_question", "after compression") != question:
        raise SystemExit(f"error: {path} holds other samples, no press rows or the question elsewhere; "
                         "write a new file with --name")  # fmt: skip
    return [RulerOutcome(**o) for o in doc["outcomes"] if o["method"] in rows], rows


if __name__ == "__main__":
    main()
