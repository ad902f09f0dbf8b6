"""Which windowed KV heads would have saved a head-wise cache's lost answers? For each RULER sample the full
cache answers right (score 100) and a 30% head-wise cache (ranked by --map, by default as `cache_headmap`)
does not, every KV head that cache windows is tried in full beside the ones it keeps (one at a time, so the
cache holds one head more than the budget), and a head counts as recovering the sample when greedy decoding
with it reproduces the full cache's answer token for token (checked step by step, stopping at the first token
that differs).

    python -m bench.recover_heads --seeds 8,9 --samples 5 --name recover-dev    # ~30 min

Writes bench/results/<model>/recover-<--name>.json (per lost sample: the heads that recover it) and .md (per
KV head: samples recovered, its rank in --map), and the counts as a head map (headmap-<--name>.json). A
ranking made from it is chosen on the seeds it ran on: judge it on others (`bench.ruler --maps name=path`).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

import headwise as hw
from bench.common import command, results_dir, ruler_sample_parser, run_main, write_json, write_markdown
from bench.ruler import shipped_map
from headwise.core.cache import HeadwiseCache
from headwise.core.caches import from_prefill
from headwise.core.generate import answer_text, decode, prefill
from headwise.core.hooks import attach
from headwise.core.models import model_id, model_shape
from headwise.core.prompts import encode
from headwise.eval import ruler_data
from headwise.eval.ruler import score


@torch.inference_mode()
def reproduces(
    model, prefilled: DynamicCache, full: list[list[int]], sink: int, window: int, answer: list[int]
) -> bool:
    """Whether greedy decoding with a head-wise cache keeping `full` (per layer) and sink + `window` for the
    rest reproduces `answer` (its first token came from the full prefill), step by step as `decode` does."""
    cache = from_prefill(prefilled, HeadwiseCache.for_heads(model, full, sink, window))
    with attach(model, cache):
        for token, following in itertools.pairwise(answer):
            out = model(torch.tensor([[token]], device=model.device), cache=cache, use_cache=True)
            if int(out.logits[0, -1].argmax()) != following:
                return False
    return True


def lost_and_saved(model, tokenizer, sample, ranking: hw.HeadMap, budget: float) -> list[list[int]] | None:
    """None when the full cache answers `sample` wrong or the cache `ranking` chooses right; else the windowed
    KV heads (layer, head) that, kept in full too, make that cache give the full cache's answer."""
    ids = torch.tensor(encode(tokenizer, sample.prompt))
    prefilled = DynamicCache(config=model.config)
    first = prefill(model, ids, prefilled)
    answer = decode(model, tokenizer, first, prefilled, sample.max_new_tokens)
    if score(sample.task, answer_text(model, tokenizer, answer), sample.outputs) < 100:
        return None
    if extra := prefilled.get_seq_length() - len(ids):
        prefilled.crop(-extra)  # back to the prompt alone
    cache = HeadwiseCache.from_headmap(model, ranking, budget, context_length=len(ids))
    kept, sink, window = cache.full_heads, cache.sink, cache.window
    mine = decode(model, tokenizer, first, from_prefill(prefilled, cache), sample.max_new_tokens)
    if score(sample.task, answer_text(model, tokenizer, mine), sample.outputs) == 100:
        return None
    saved, every = [], set(range(model_shape(model).num_kv_heads))
    for layer, heads in enumerate(kept):
        for head in sorted(every - set(heads)):
            trial = [[*h, head] if i == layer else h for i, h in enumerate(kept)]
            if reproduces(model, prefilled, trial, sink, window, answer):
                saved.append([layer, head])
    return saved


def main() -> None:
    parser = ruler_sample_parser(__doc__, samples=5, seeds="8,9", seeds_help="RULER seeds")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--map", default="default", help="the ranking whose losses are examined: default, "
                        "retrieval, gates, cache or a head map file")  # fmt: skip
    parser.add_argument("--name", default="recover-dev")
    args = parser.parse_args()
    tasks = ruler_data.check_tasks(args.tasks)  # before the model loads: a bad name fails fast
    model, tokenizer = hw.load_model(args.model, dtype=args.dtype)
    shape, name = model_shape(model), model_id(model).replace("/", "--")
    ranking = shipped_map(args.model, args.map, model)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = np.zeros((shape.num_layers, shape.num_kv_heads))
    lost, began = [], time.perf_counter()
    bar = tqdm(total=len(seeds) * len(tasks) * args.samples, desc="recover heads", unit="sample")
    for seed in seeds:
        for task in tasks:
            for sample in ruler_data.generate(tokenizer, task, args.length, args.samples, seed, name):
                saved = lost_and_saved(model, tokenizer, sample, ranking, args.budget)
                if saved is not None:
                    lost.append({"seed": seed, "task": task, "index": sample.index, "recovered_by": saved})
                    for layer, head in saved:
                        counts[layer, head] += 1
                bar.update()
                bar.set_postfix(lost=len(lost))
    bar.close()
    out = results_dir(args.model)
    method = {"score": f"windowed KV heads that, kept in full beside those of a {args.budget:.0%} cache ranked by "
                       f"{args.map}, make it reproduce the full cache's right answer: samples recovered",
              "ranking": ranking.method,
              "tasks": tasks, "length": args.length, "seeds": seeds, "samples_per_task": args.samples,
              "ruler": ruler_data.package_version(), "dtype": args.dtype, "command": command()}  # fmt: skip
    hw.HeadMap(model_id(model), np.repeat(counts, shape.num_heads // shape.num_kv_heads, axis=1), shape.num_kv_heads,
               kind="recover", method=method).save(out / f"headmap-{args.name}.json")  # fmt: skip
    doc = {"command": command(), "settings": method, "lost": lost,
           "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    write_json(out / f"recover-{args.name}.json", doc)
    ranks = np.empty(counts.size, dtype=int)
    ranks[np.argsort(-ranking.kv_scores().ravel(), kind="stable")] = np.arange(counts.size)
    table = [f"| KV head (layer, head) | lost samples it recovers | rank in {args.map} |", "|---|---:|---:|"]
    for i in np.argsort(-counts.ravel(), kind="stable"):
        if counts.ravel()[i]:
            table.append(f"| {i // shape.num_kv_heads}, {i % shape.num_kv_heads} | {int(counts.ravel()[i])} | "
                         f"{ranks[i] + 1} |")  # fmt: skip
    each = ", ".join(f"{s['task']} #{s['index']} (seed {s['seed']}): {len(s['recovered_by'])}" for s in lost)
    alone = sum(bool(s["recovered_by"]) for s in lost)
    about = (
        f"`{command()}`. The {args.budget:.0%} cache ranked by {args.map} lost {len(lost)} samples the full cache "
        f"answered right; one more KV head in full recovers {alone} of them (heads that do, per sample: {each})."
    )
    write_markdown(out / f"recover-{args.name}.md", f"Heads that recover lost answers ({args.name})", about, table)


if __name__ == "__main__":
    run_main(main)
