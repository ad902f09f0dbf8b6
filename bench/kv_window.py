"""Choose the window of HeadwiseCache's non-retrieval heads on dev needles, not on the evaluation set.

    python bench/kv_window.py --model smollm2-135m     # ~8 min on 2 CPU cores

At a fixed KV budget a smaller window leaves more bytes for full (retrieval) heads. This sweeps the
window on tests that bench/kv_cache.py does not use (Pride and Prejudice, needles 5-7 of the shipped
list: not the held-out ones, not the ones the head map was profiled on) and writes
bench/results/<model>/kv_window.json and .md; kv_cache.py then uses the chosen window.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kv_cache import run_cache, table  # bench/ is on the path when a script here runs

from headwise.haystack import load_haystack
from headwise.headmap import HeadMap, shipped_headmap
from headwise.models import load_model
from headwise.tasks import load_needles, make_tests


def main() -> None:
    """Run the full cache once and HeadwiseCache at each (budget, window); save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--headmap", type=Path, help="retrieval head map (default: the one shipped for --model)")
    parser.add_argument("--budgets", default="0.2,0.3")
    parser.add_argument("--windows", default="16,32,64,176")
    parser.add_argument("--lengths", default="1200,2400")
    args = parser.parse_args()
    out = Path(__file__).parent / "results" / args.model.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(args.model)
    headmap = HeadMap.load(args.headmap, model) if args.headmap else shipped_headmap(args.model)
    lengths = [int(x) for x in args.lengths.split(",")]
    tests = make_tests(tok, load_haystack("pride-and-prejudice"), load_needles()[4:7], lengths, [0.1, 0.5, 0.9], 5)
    runs = [("full", 1.0, 0)] + [
        ("headwise", float(b), int(w)) for b in args.budgets.split(",") for w in args.windows.split(",")
    ]
    rows = [run_cache(model, tok, tests, method, budget, headmap, window) for method, budget, window in runs]
    command = "python bench/kv_window.py " + " ".join(sys.argv[1:])
    (out / "kv_window.json").write_text(json.dumps({"command": command, "lengths": lengths, "rows": rows}, indent=1))
    lines = [
        f"# {args.model}: window of non-retrieval heads (dev needles)",
        "",
        f"Command: `{command}`; {len(tests)} tests (needles 5-7, pride-and-prejudice), lengths {lengths}, "
        "depths [0.1, 0.5, 0.9].",
        "",
        *table(rows),
    ]
    (out / "kv_window.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
