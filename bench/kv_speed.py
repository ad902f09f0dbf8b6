"""decode speed and peak process memory at a long context,
full KV cache vs HeadwiseCache, both through model.generate().

    python -m bench.kv_speed --model smollm2-135m --length 8000      # ~5 min on 2 CPU cores

Each method runs in its own process so that its peak resident memory (VmHWM, reset after the model
is loaded) is its own. Decode speed is timed between the first and last generated token, so it
excludes prefill. Writes bench/results/<model>/kv_speed.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, command, results_dir, write_json

METHODS = {  # name: (cache, prefill chunk size or None)
    "full": ("full", None),
    "full, chunked prefill": ("full", 512),
    "headwise, chunked prefill": ("headwise", 512),
}


def child(args: argparse.Namespace) -> None:
    """Load the model, build one needle prompt, generate with one method, print a JSON line."""
    import contextlib

    import torch
    from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

    import headwise as hw
    from headwise.core.cache import kv_nbytes
    from headwise.eval.tasks import make_test

    cache_kind, chunk = METHODS[args.method]
    model, tok = hw.load_model(args.model)
    headmap = hw.HeadMap.load(args.headmap) if args.headmap else hw.cache_headmap(args.model)
    test = make_test(tok, hw.load_haystack("frankenstein"), hw.load_needles()[-1], args.length, 0.5, start=100)
    ids = test.ids[None]
    if cache_kind == "full":
        cache = DynamicCache(config=model.config)
    else:
        cache = hw.HeadwiseCache.from_headmap(model, headmap, budget=args.budget, context_length=ids.shape[-1])

    stamps: list[float] = []

    class Clock(StoppingCriteria):
        """Record when each new token is ready; never stop early."""

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark: count only what generate adds
    before = _status("VmRSS")
    began = time.perf_counter()
    attached = hw.attach(model, cache) if isinstance(cache, hw.HeadwiseCache) else contextlib.nullcontext()
    with torch.inference_mode(), attached:
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            prefill_chunk_size=chunk,
            stopping_criteria=StoppingCriteriaList([Clock()]),
        )
    held, full = kv_nbytes(cache)
    row = {
        "method": args.method,
        "length": int(ids.shape[-1]),
        "prefill_s": round(stamps[0] - began, 2),
        "decode_tok_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2),
        "rss_before_mb": round(before / 2**20),
        "peak_rss_mb": round(_status("VmHWM") / 2**20),
        "kv_mb": round(held / 2**20, 1),
        "kv_full_mb": round(full / 2**20, 1),
    }
    sys.stdout.write(json.dumps(row) + "\n")


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    """Run every method in a fresh process, then save the table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--headmap", help="head map ranking the KV heads (default: cache_headmap(--model))")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        child(args)
        return
    rows = []
    for method in METHODS:
        cmd = [sys.executable, "-m", "bench.kv_speed", *sys.argv[1:], "--method", method]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        sys.stderr.write(f"{method}: {rows[-1]}\n")
    out = results_dir(args.model)
    full = rows[0]
    doc = {
        "command": command(),
        "budget": args.budget,
        "headmap": args.headmap or f"cache_headmap({args.model!r})",
        "new_tokens": args.new_tokens,
        "rows": rows,
        "decode_speedup": round(rows[-1]["decode_tok_s"] / full["decode_tok_s"], 2),
    }
    write_json(out / "kv_speed.json", doc)
    lines = [
        f"# {args.model}: decode speed and peak memory at {full['length']} tokens",
        "",
        f"Command: `{doc['command']}`; head map `{doc['headmap']}`, budget {args.budget:.0%}, "
        f"{args.new_tokens} new tokens, float32, one process per method. "
        "Peak RSS is the whole process's high-water mark during generate().",
        "",
        "| method | prefill s | decode tok/s | RSS before MB | peak RSS MB | KV held MB | full KV MB |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['method']} | {r['prefill_s']} | {r['decode_tok_s']} | {r['rss_before_mb']} | {r['peak_rss_mb']} | "
            f"{r['kv_mb']} | {r['kv_full_mb']} |"
            for r in rows
        ],
        "",
        f"Decode speed-up of headwise over the full cache: {doc['decode_speedup']}x.",
    ]
    (out / "kv_speed.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    plot(rows, out / "kv_speed.png", args.model)


def plot(rows: list[dict], path: Path, model: str) -> None:
    """Two bar charts side by side: decode tokens/s and peak RSS per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["method"].replace(", ", "\n") for r in rows]
    for ax, key, label in ((axes[0], "decode_tok_s", "decode tokens/s"), (axes[1], "peak_rss_mb", "peak RSS (MB)")):
        ax.bar(names, [r[key] for r in rows], color=["#888", "#aaa", "#2a7"])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{model} at {rows[0]['length']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
