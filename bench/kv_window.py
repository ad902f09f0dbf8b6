"""Choose the window of HeadwiseCache's non-retrieval heads, and its head ranking, on dev needles.

    python -m bench.kv_window --model smollm2-135m     # ~8 min on 2 CPU cores

At a fixed KV budget a smaller window leaves more bytes for full (retrieval) heads. This sweeps the
window on tests that bench/kv_cache.py does not use (Pride and Prejudice, needles 5-7 of the shipped
list: not the held-out ones, not the ones the head map was profiled on) and writes
bench/results/<model>/<--name>.json and .md; kv_cache.py then uses the chosen window. `--map NAME=PATH`
adds a ranking of KV heads by another head map, to choose between rankings on these dev tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import headwise as hw
from bench.caches import extra_maps, run_cache, save_table, variant
from bench.common import command, results_dir
from headwise.eval.haystack import load_haystack
from headwise.eval.tasks import load_needles, make_tests


def main() -> None:
    """Run the full cache once and HeadwiseCache at each (budget, head map, window); save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--headmap", type=Path, help="retrieval head map (default: the one shipped for --model)")
    parser.add_argument("--map", action="append", default=[], help="NAME=PATH: also rank KV heads by this head map")
    parser.add_argument("--budgets", default="0.2,0.3")
    parser.add_argument("--windows", default="16,32,64,176")
    parser.add_argument("--reduce", default="max", help="max, mean or max,mean: KV head score from its query heads'")
    parser.add_argument("--lengths", default="1200,2400")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--name", default="kv_window", help="file name of the results under bench/results/<model>/")
    args = parser.parse_args()
    out = results_dir(args.model)
    out.mkdir(parents=True, exist_ok=True)
    model, tok = hw.load_model(args.model)
    maps = {"headwise": hw.HeadMap.load(args.headmap, model) if args.headmap else hw.shipped_headmap(args.model)}
    maps |= extra_maps(args.map, model)
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]
    tests = make_tests(tok, load_haystack("pride-and-prejudice"), load_needles()[4:7], lengths, depths, 5)
    rows = [run_cache(model, tok, tests, "full", 1.0, None, 0)] + [
        run_cache(model, tok, tests, variant(method, reduce), float(b), headmap, int(w), reduce)
        for b in args.budgets.split(",")
        for method, headmap in maps.items()
        for w in args.windows.split(",")
        for reduce in args.reduce.split(",")
    ]
    doc = {"command": command(), "lengths": lengths, "depths": depths, "rows": rows}
    save_table(
        out / args.name,
        doc,
        f"{args.model}: window and ranking of non-retrieval heads (dev needles)",
        f"Command: `{doc['command']}`; {len(tests)} tests (needles 5-7, pride-and-prejudice), lengths {lengths}, "
        f"depths {depths}.",
    )


if __name__ == "__main__":
    main()
