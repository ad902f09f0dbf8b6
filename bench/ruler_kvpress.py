"""kvpress's presses on the very RULER samples a saved `bench.ruler` run answered, side by side with it.

    bench/kvpress/setup.sh                                            # once: kvpress in .venv-kvpress
    python -m bench.ruler_kvpress --run ruler-4096 --samples 2 --presses snapkv,streaming_llm --budgets 0.3

The samples come from the run's own settings (same seed, same cached generator output), exported as token
ids: the prompt up to the end of RULER's context is kvpress's context (compressed during prefill), the rest
(question, chat template's end, RULER's answer prefix) its question. kvpress answers greedily in its own
environment (bench/kvpress/run_presses.py, RULER's generation length per task); answers are scored here
by RULER's metric. Writes bench/results/<model>/ruler/<run>-kvpress.{json,md,png}: the run's rows for the
same samples plus the presses'.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from bench.common import results_dir
from bench.kv_cache import answer_with_kvpress, require_kvpress
from bench.ruler import write
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
    args = parser.parse_args()
    require_kvpress()  # before the samples are made
    out = results_dir(args.model, "ruler")
    run = json.loads((out / f"{args.run}.json").read_text())
    settings = run["settings"]
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
    tests = [
        {
            "context_ids": encode(tokenizer, s.prompt[: s.context[1]]),
            "question_ids": encode(tokenizer, s.prompt[s.context[1] :]),
            "max_new_tokens": s.max_new_tokens,
        }
        for s in samples
    ]
    spec = {
        "model_dir": where, "gguf_file": gguf, "presses": [f"kvpress-{p}" for p in args.presses.split(",")],
        "budgets": [float(b) for b in args.budgets.split(",")], "max_new_tokens": 128, "tests": tests,
        "dtype": args.dtype or settings["dtype"],
    }  # fmt: skip
    answered = answer_with_kvpress(spec)
    keys = {(s.task, s.length, s.index) for s in samples}
    outcomes = [RulerOutcome(**o) for o in run["outcomes"] if (o["task"], o["length"], o["index"]) in keys]
    for row in answered["rows"]:
        method = f"{row['method']}-{row['budget']:.0%}"
        per = row["seconds"] / len(samples)
        for s, t, answer in zip(samples, tests, row["answers"], strict=True):
            tokens = len(t["context_ids"]) + len(t["question_ids"])
            outcomes.append(RulerOutcome(
                s.task, s.length, s.index, method, answer, s.outputs, score(s.task, answer, s.outputs), tokens, 0,
                round(per, 2),
            ))  # fmt: skip
    kept = {**settings, "samples": count, "tasks": tasks, "kvpress": answered["kvpress_version"],
            "kvpress_dtype": spec["dtype"]}  # fmt: skip
    held = ", ".join(f"{r['method']}-{r['budget']:.0%} {r['kv_ratio']:.0%}" for r in answered["rows"])
    note = (
        f" kvpress {answered['kvpress_version']} rows: its own prefill and pipeline per sample (context = the "
        "prompt up to the end of RULER's context), 's per answer' = its prefill + decoding; the share of the "
        f"context's KV entries each press held after answering (its own count): {held}."
    )
    write(RulerResult(run["model"], outcomes, kept), out, f"{args.run}-kvpress", note)


if __name__ == "__main__":
    main()
