"""Which heads do answers read the context through? Per head, the attention that the full cache's answer
steps put on the answer's own words where they stand in the context (outside the last `--recent` prompt tokens,
which a windowed head keeps anyway), averaged over the prompts the full cache answers right: RULER samples, or
needle tests in prose with --needles. Saved as a head map, so that a head-wise cache can be ranked by it
(`bench.ruler --maps name=path`).

    python -m bench.answer_attention --seeds 7,8 --samples 5 --name ruler-attention-dev   # ~25 min
        # RULER's development seeds only: a map made here is judged on other seeds
    python -m bench.answer_attention --needles 4 --name needle-attention                   # ~4 min
    python -m bench.answer_attention --union default,bench/results/smollm2-135m/headmap-needle-attention.json \
        --name union-needle-attention     # a head either map ranks high stays high

Writes bench/results/<model>/headmap-<--name>.json and a .md table: each KV head's score next to its rank in
the default cache ranking, and whether the default keeps it full at 30%.
"""

from __future__ import annotations

import re
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

import headwise as hw
from bench.common import command, results_dir, ruler_sample_parser, run_main, write_markdown
from headwise.core.generate import MAX_NEW_TOKENS, answer_text, decode, prefill
from headwise.core.hooks import AttentionCall, AttentionHook, attach
from headwise.core.models import model_id, model_shape
from headwise.core.needles import is_correct
from headwise.core.policy import CachePolicy, split_budget
from headwise.core.prompts import encode
from headwise.eval import ruler_data
from headwise.eval.ruler import score


class AnswerMass(AttentionHook):
    """At each decode step, per layer and head, the attention weight on the positions in `on` (absolute)."""

    def __init__(self, on: torch.Tensor, num_layers: int, num_heads: int, steps: int) -> None:
        self.on = torch.cat([on, torch.zeros(steps, dtype=torch.bool)])  # the answer's own keys never count
        self.mass = torch.zeros(num_layers, num_heads)

    def weights(self, call: AttentionCall, weights: torch.Tensor) -> torch.Tensor:
        """Add the step's weight on `on` (a sliding layer's keys are a recent suffix: offset them)."""
        offset = int(call.positions[-1]) + 1 - weights.shape[-1]
        self.mass[call.layer] += weights[0][:, self.on[offset : offset + weights.shape[-1]]].sum(-1).cpu()
        return weights


def answer_positions(tokenizer, sample: ruler_data.Sample) -> torch.Tensor:
    """(prompt tokens,) bool: the tokens of every place in the task's context where one of the sample's answers
    stands (case-insensitive, whole words)."""
    enc = tokenizer(sample.prompt, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.array([a for a, _ in enc["offset_mapping"]])
    ends = np.array([b for _, b in enc["offset_mapping"]])
    on = np.zeros(len(starts), dtype=bool)
    a, b = sample.context
    for output in sample.outputs:
        for m in re.finditer(rf"(?<!\w){re.escape(output)}(?!\w)", sample.prompt[a:b], flags=re.IGNORECASE):
            on |= (starts < a + m.end()) & (ends > a + m.start())
    return torch.from_numpy(on)


def ruler_items(model, tokenizer, args):
    """(label, prompt ids, answer positions, tokens to generate, judge) per RULER sample of the seeds asked."""
    name = model_id(model).replace("/", "--")
    for seed in (int(s) for s in args.seeds.split(",")):
        for task in ruler_data.check_tasks(args.tasks):
            for sample in ruler_data.generate(tokenizer, task, args.length, args.samples, seed, name):
                ids = torch.tensor(encode(tokenizer, sample.prompt))
                yield (
                    task,
                    ids,
                    answer_positions(tokenizer, sample),
                    sample.max_new_tokens,
                    (lambda text, s=sample: score(s.task, text, s.outputs) == 100.0),
                )


def needle_items(tokenizer, args):
    """The same per needle test of a grid in prose: the answer positions are the needle sentence's tokens."""
    lengths = tuple(int(n) for n in args.needle_lengths.split(","))
    grid = hw.NeedleGrid(lengths, (0.1, 0.3, 0.5, 0.7, 0.9), needles=args.needles, haystack=args.book)
    for test in hw.needle_tests(tokenizer, grid):
        on = torch.zeros(len(test.ids), dtype=torch.bool)
        on[test.span[0] : test.span[1]] = True
        yield f"needles {test.length}", test.ids, on, MAX_NEW_TOKENS, lambda text, t=test: is_correct(t.needle, text)


def union(model_name: str, names: list[str], name: str) -> None:
    """Save a map that ranks a head by the larger of its scores in `names` (each divided by its map's largest),
    so that a head any of them ranks high stays high."""
    from bench.ruler import shipped_map

    maps = [shipped_map(model_name, n, None) for n in names]
    scores = np.max([m.scores / m.scores.max() for m in maps], axis=0)
    method = {"score": "union: each head's largest score over the maps, each map divided by its largest score",
              "maps": {n: m.method for n, m in zip(names, maps, strict=True)}, "command": command()}  # fmt: skip
    path = hw.HeadMap(maps[0].model, scores, maps[0].num_kv_heads, kind="union", method=method).save(
        results_dir(model_name) / f"headmap-{name}.json"
    )
    sys.stdout.write(f"wrote {path}\n")


def main() -> None:
    parser = ruler_sample_parser(__doc__, samples=4, seeds="7,8", seeds_help="RULER seeds (development data only)")
    parser.add_argument("--needles", type=int, default=0, help="instead of RULER: this many needles of the shipped "
                        "profiling set in --book, at --needle-lengths and depths 0.1-0.9")  # fmt: skip
    parser.add_argument("--book", default="pride-and-prejudice")
    parser.add_argument("--needle-lengths", default="1000,2000,3500")
    parser.add_argument("--recent", type=int, default=128, help="last prompt tokens not counted (a window keeps them)")
    parser.add_argument("--union", default="", help="instead: save the union of head maps (default, gates, "
                        "retrieval or files; comma-separated) as --name")  # fmt: skip
    parser.add_argument("--name", default="ruler-attention-dev")
    args = parser.parse_args()
    if args.union:
        union(args.model, args.union.split(","), args.name)
        return
    model, tokenizer = hw.load_model(args.model, dtype=args.dtype)
    shape = model_shape(model)
    if args.needles:
        items, size = needle_items(tokenizer, args), args.needles * 5 * len(args.needle_lengths.split(","))
        data = {"needles": args.needles, "book": args.book, "lengths": args.needle_lengths, "depths": "0.1-0.9"}
    else:
        tasks = ruler_data.check_tasks(args.tasks)
        items, size = ruler_items(model, tokenizer, args), len(tasks) * args.samples * len(args.seeds.split(","))
        data = {"tasks": tasks, "length": args.length, "seeds": [int(s) for s in args.seeds.split(",")],
                "samples_per_task": args.samples, "ruler": ruler_data.package_version()}  # fmt: skip
    total = torch.zeros(shape.num_layers, shape.num_heads)
    by_task: dict[str, list[int]] = {}
    began = time.perf_counter()
    for label, ids, on, max_new, judge in tqdm(items, total=size, desc="answer attention", unit="prompt"):
        on[max(len(on) - args.recent, 0) :] = False  # a windowed head keeps these anyway
        cache = DynamicCache(config=model.config)
        first = prefill(model, ids, cache)
        probe = AnswerMass(on, shape.num_layers, shape.num_heads, max_new)
        with attach(model, probe):
            produced = decode(model, tokenizer, first, cache, max_new)
        right = judge(answer_text(model, tokenizer, produced))
        by_task.setdefault(label, [0, 0])[0] += right
        by_task[label][1] += 1
        if right and on.any():
            total += probe.mass / max(len(produced) - 1, 1)
    counted = sum(r for r, _ in by_task.values())
    scores = (total / max(counted, 1)).numpy()
    headmap = hw.HeadMap(model_id(model), scores, shape.num_kv_heads, kind="answer-attention", method={
        "score": "answer attention: mean decode-step attention weight on the answer's own words in the context "
                 f"(outside the last {args.recent} prompt tokens), full cache, prompts answered right",
        **data, "counted": counted, "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - began, 1), "command": command(),
    })  # fmt: skip
    out = results_dir(args.model)
    headmap.save(out / f"headmap-{args.name}.json")
    default = hw.cache_headmap(args.model).kv_scores()
    order = np.argsort(-default.ravel(), kind="stable")
    rank = np.empty(order.size, dtype=int)
    rank[order] = np.arange(order.size)
    kv = headmap.kv_scores()
    length = args.length - 300 if not args.needles else max(int(n) for n in args.needle_lengths.split(","))
    n_full, _ = split_budget(0.3, kv.size, CachePolicy().sink, CachePolicy().window, length)
    table = ["| KV head (layer, head) | answer attention | default rank | full at 30% |", "|---|---:|---:|---|"]
    for i in np.argsort(-kv.ravel(), kind="stable")[:40]:
        table.append(f"| {i // kv.shape[1]}, {i % kv.shape[1]} | {kv.ravel()[i]:.3f} | {rank[i] + 1} | "
                     f"{'yes' if rank[i] < n_full else 'no'} |")  # fmt: skip
    mine = set(np.argsort(-kv.ravel(), kind="stable")[:n_full])
    about = (
        f"`{command()}`. {counted} prompts counted ({', '.join(f'{t} {r}/{n}' for t, (r, n) in by_task.items())}). "
        f"At 30% of a {length}-token context {n_full} KV heads stay full; this map's top {n_full} share "
        f"{len(mine & set(order[:n_full]))} with the default ranking's."
    )
    write_markdown(out / f"headmap-{args.name}.md", f"Answer attention ({args.name})", about, table)


if __name__ == "__main__":
    run_main(main)
