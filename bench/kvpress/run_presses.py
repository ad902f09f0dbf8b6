"""Run kvpress presses on prompts exported by bench/kv_cache.py or bench/ruler_kvpress.py; runs inside .venv-kvpress.

    .venv-kvpress/bin/python bench/kvpress/run_presses.py TESTS.json OUT.json
    .venv-kvpress/bin/python bench/kvpress/run_presses.py --list      # the presses it runs, one per line

It does not import headwise (kvpress pins an older transformers). The prompts arrive as token ids
split into context and question, so both sides see identical tokens; kvpress compresses the
context during prefill and answers greedily with its own pipeline code (a test may carry its own
max_new_tokens). Answers are scored on the
headwise side, with the same rule as every other method.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from kvpress import (
    AdaKVPress,
    ExpectedAttentionPress,
    KnormPress,
    KVzipPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline

PRESSES = {
    "kvpress-streaming_llm": lambda r: StreamingLLMPress(compression_ratio=r),
    "kvpress-snapkv": lambda r: SnapKVPress(compression_ratio=r),
    "kvpress-adakv_snapkv": lambda r: AdaKVPress(SnapKVPress(compression_ratio=r)),
    "kvpress-expected_attention": lambda r: ExpectedAttentionPress(compression_ratio=r),
    "kvpress-tova": lambda r: TOVAPress(compression_ratio=r),
    "kvpress-knorm": lambda r: KnormPress(compression_ratio=r),
    "kvpress-kvzip": lambda r: KVzipPress(compression_ratio=r),
}


def main() -> None:
    """Answer every exported test under every press and budget; write the answers and timings."""
    if sys.argv[1] == "--list":
        sys.stdout.write("".join(f"{name}\n" for name in PRESSES))
        return
    spec = json.loads(Path(sys.argv[1]).read_text())
    kwargs = {"gguf_file": spec["gguf_file"]} if spec["gguf_file"] else {}
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=getattr(torch, spec.get("dtype", "float32")), attn_implementation="sdpa", **kwargs
    )
    if spec["gguf_file"]:
        # KVzip loads the tokenizer again from config.name_or_path, which cannot name a GGUF file: point it at a
        # plain copy of the same tokenizer.
        plain = tempfile.TemporaryDirectory(prefix="kvpress-tokenizer-")  # removed when this process ends
        tokenizer.save_pretrained(plain.name)
        model.config.name_or_path = plain.name
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer)
    rows = []
    for name in spec["presses"]:
        for budget in spec["budgets"]:
            began = time.perf_counter()
            answers, held = [], []
            for test in spec["tests"]:
                context = torch.tensor([test["context_ids"]])
                question = torch.tensor([test["question_ids"]])
                cache = DynamicCache()
                with torch.inference_mode():
                    answer = pipe._forward(
                        {"context_ids": context, "questions_ids": [question]},
                        max_new_tokens=test.get("max_new_tokens", spec["max_new_tokens"]),
                        press=PRESSES[name](1.0 - budget),
                        cache=cache,
                    )[0]
                answers.append(answer.strip())
                # After answering, the pipeline trims the cache back to the compressed context: its share of
                # the uncompressed context is what this press really holds (presses that mask hold it all).
                kept = sum(layer.keys.shape[2] for layer in cache.layers)
                held.append(kept / (len(cache.layers) * context.shape[1]))
            rows.append(
                {
                    "method": name,
                    "budget": budget,
                    "answers": answers,
                    "held": held,
                    "kv_ratio": sum(held) / len(held),
                    "seconds": round(time.perf_counter() - began, 1),
                }
            )
            sys.stderr.write(f"{name} budget {budget:.0%}: {rows[-1]['seconds']} s\n")
    Path(sys.argv[2]).write_text(json.dumps({"kvpress_version": _version(), "rows": rows}, indent=1))


def _version() -> str:
    """The installed kvpress version, for the results file."""
    from importlib.metadata import version

    return version("kvpress")


if __name__ == "__main__":
    main()
