"""Which KV heads a head-wise cache should swap: for each test the full cache answers, its answer is
teacher-forced under the default HeadwiseCache at `--budget`, then with each windowed KV head restored
alone and each full KV head windowed alone; greedy swaps pair the best mean gain in answer log-prob with
the cheapest mean cost while the gain is larger, and the swapped heads exchange their scores in the map.

    python -m bench.kv_swaps --grids dev,fresh,fresh2 \
        --headmap bench/results/smollm2-135m/headmap-gates-names-ties-1.0.json   # ~50 min on 2 CPU cores

The prompt's prefill is the same for every variant (windowed heads attend to the whole prompt in a
one-shot prefill), so it runs once per test with a full cache, and each variant is cut from it and
scores the answer in one forward pass. Writes bench/results/<model>/kv_swaps.json, .md and
headmap-gates-swapped.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache

import headwise as hw
from bench.common import command, results_dir, write_json
from bench.grids import SWAP_GRIDS as GRIDS
from headwise.core.cache import HeadwiseCache
from headwise.core.generate import answer_text, greedy_tokens
from headwise.core.headmap import HeadMap
from headwise.core.models import model_shape, sliding_layers
from headwise.core.needles import NeedleTest, is_correct
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import load_needles, make_tests

Head = tuple[int, int]  # (layer, KV head)


def main() -> None:
    """Measure every test of the grids, pick the swaps, save the swapped map and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--grids", default="dev,fresh,fresh2", help=f"comma-separated, of {', '.join(GRIDS)}")
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--max-swaps", type=int, default=3)
    parser.add_argument("--headmap", type=Path, help="the ranking to start from (default: the caches' default)")
    args = parser.parse_args()
    model, tok = hw.load_model(args.model)
    if sliding_layers(model):
        raise SystemExit("kv_swaps.py measures models whose layers all attend globally; this one has sliding layers")
    headmap = HeadMap.load(args.headmap, model) if args.headmap else hw.cache_headmap(args.model)
    measured = []
    for name in args.grids.split(","):
        book, which, lengths, depths, seed = GRIDS[name]
        needles = load_needles()[which] if isinstance(which, slice) else load_needles(which)
        tests = make_tests(tok, load_haystack(book), needles, lengths, depths, seed=seed)
        for test in tqdm(tests, desc=name, unit="test"):
            row = measure(model, tok, headmap, test, args.budget)
            if row is not None:
                measured.append({"grid": name, **row})
    gains = mean_change(measured, "restored")
    costs = {h: -change for h, change in mean_change(measured, "windowed").items()}
    swaps = pick_swaps(gains, costs, args.max_swaps)
    out = results_dir(args.model)
    swapped_map(headmap, swaps, command()).save(out / "headmap-gates-swapped.json")
    doc = {"command": command(), "budget": args.budget, "tests": measured, "gains": gains, "costs": costs}
    write_json(out / "kv_swaps.json", {**doc, "swaps": swaps})
    lines = report({**doc, "swaps": swaps})
    (out / "kv_swaps.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


@torch.inference_mode()
def measure(model, tok, headmap: HeadMap, test: NeedleTest, budget: float) -> dict | None:
    """The full cache's greedy answer, and how its log-prob moves as each KV head alone changes side
    (None when the full cache answers wrong: there is nothing to keep)."""
    cache = DynamicCache(config=model.config)
    answer = greedy_tokens(model, tok, test.ids, cache=cache)
    keys = [layer.keys[:, :, : len(test.ids)] for layer in cache.layers]  # the prompt's, shared by all variants
    values = [layer.values[:, :, : len(test.ids)] for layer in cache.layers]
    text = answer_text(model, tok, answer)
    if not is_correct(test.needle, text):
        return None
    default = HeadwiseCache.from_headmap(model, headmap, budget, context_length=len(test.ids))
    full = {(layer, h) for layer, heads in enumerate(default.full_heads) for h in heads}
    shape = model_shape(model)
    windowed = {(layer, h) for layer in range(shape.num_layers) for h in range(shape.num_kv_heads)} - full

    def score(kept: set[Head]) -> float:
        """Log-prob of the answer's tokens after the first (which the shared prefill fixes) with `kept` full."""
        held = [[h for h in range(shape.num_kv_heads) if (layer, h) in kept] for layer in range(shape.num_layers)]
        variant = HeadwiseCache.for_heads(model, held, default.sink, default.window)
        for layer, part in enumerate(variant.layers):
            part.update(keys[layer], values[layer])
        with hw.attach(model, variant):
            logits = model(torch.tensor([answer[:-1]]), cache=variant, use_cache=True).logits[0]
        return float(logits.float().log_softmax(-1)[torch.arange(len(answer) - 1), answer[1:]].sum())

    base = score(full)
    return {
        "test": f"{test.length} tokens, depth {test.depth}: {test.needle.question}",
        "answer": text,
        "log_prob": base,
        "restored": {f"{l},{h}": score(full | {(l, h)}) - base for l, h in sorted(windowed)},
        "windowed": {f"{l},{h}": score(full - {(l, h)}) - base for l, h in sorted(full)},
    }


def mean_change(measured: list[dict], side: str) -> dict[str, float]:
    """Mean log-prob change per head over the tests where it was on that side (full heads vary by length)."""
    heads = sorted({h for row in measured for h in row[side]})
    return {h: float(np.mean([row[side][h] for row in measured if h in row[side]])) for h in heads}


def pick_swaps(gains: dict[str, float], costs: dict[str, float], most: int) -> list[tuple[str, str]]:
    """Greedy pairs (head in, head out): best gain against cheapest cost while the gain is larger. A head
    measured on both sides (full at some lengths, windowed at others) joins at most one pair."""
    swaps: list[tuple[str, str]] = []
    used: set[str] = set()
    for head_in in sorted(gains, key=lambda h: -gains[h]):
        if head_in in used:
            continue
        head_out = min((h for h in costs if h not in used and h != head_in), key=lambda h: costs[h], default=None)
        if head_out is None or len(swaps) == most or gains[head_in] <= costs[head_out]:
            break
        swaps.append((head_in, head_out))
        used |= {head_in, head_out}
    return swaps


def swapped_map(headmap: HeadMap, swaps: list[tuple[str, str]], command: str) -> HeadMap:
    """The map with each swapped pair of KV heads exchanging their query heads' scores."""
    scores, group = headmap.scores.copy(), headmap.num_heads // headmap.num_kv_heads
    for a, b in swaps:
        (la, ha), (lb, hb) = (tuple(int(x) for x in s.split(",")) for s in (a, b))
        ga, gb = slice(ha * group, (ha + 1) * group), slice(hb * group, (hb + 1) * group)
        scores[la, ga], scores[lb, gb] = scores[lb, gb].copy(), scores[la, ga].copy()
    swapped = {"swaps": [list(pair) for pair in swaps], "swaps_by": command}  # pairs of "layer,KV head": in, out
    return replace(headmap, scores=scores, method={**headmap.method, **swapped})


def report(doc: dict) -> list[str]:
    """Markdown: what was run, the heads with the largest gains and smallest costs, the swaps."""
    gains = sorted(doc["gains"].items(), key=lambda x: -x[1])[:8]
    costs = sorted(doc["costs"].items(), key=lambda x: x[1])[:8]
    pairs = zip(gains, costs, strict=False)  # the 8 best of each side, side by side
    return [
        "# Per-head swaps for the head-wise cache",
        "",
        f"`{doc['command']}`: {len(doc['tests'])} tests the full cache answers, budget {doc['budget']:.0%}. "
        "Mean change in the answer's log-prob (nats) when one windowed KV head is restored (gain) or one full "
        "KV head is windowed (cost, as a loss), over the tests where that head was on that side.",
        "",
        "| rank | windowed head | gain | full head | cost |",
        "|---|---|---|---|---|",
        *[f"| {i + 1} | {g} | {gain:.3f} | {c} | {cost:.3f} |" for i, ((g, gain), (c, cost)) in enumerate(pairs)],
        "",
        f"Swaps (in, out): {doc['swaps']}",
    ]


if __name__ == "__main__":
    main()
