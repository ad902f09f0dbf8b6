"""How much of the full cache's RULER average a cache keeps, pooled over saved runs on other seeds, with a
95% interval (paired bootstrap over samples, each task's samples redrawn), so a share is read with its spread.

    python -m bench.ruler_share --pool "default=ruler-4096-10:headwise-30%,ruler-4096-10-seed43:headwise-30%" \
        --pool "union=ruler-4096-10-union:headwise[union-ruler]-30%,..." --name share-4096

Each --pool is LABEL=RUN:METHOD,...: the method's answers in each saved run (bench.ruler or a kvpress file),
paired with that run's full cache on the same samples. `--merge` cannot join runs whose methods carry other
names (a plain run's `headwise-30%` and a ranking run's `headwise[default]-30%`); this can. Writes
bench/results/<model>/ruler/<--name>.json and .md.
"""

from __future__ import annotations

import argparse
import json

from bench.common import command, results_dir, run_main, write_json, write_markdown
from bench.ruler import paired_scores, share_interval
from headwise.eval.ruler import RulerOutcome


def pooled(model: str, parts: list[tuple[str, str]], label: str) -> tuple[list[RulerOutcome], int, list]:
    """The full cache's and each part's method's outcomes (renamed `label`), sample indices made distinct
    per run; with the one length and the seeds they share."""
    out = results_dir(model, "ruler")
    outcomes, offset, lengths, seeds = [], 0, set(), []
    for run, method in parts:
        path = out / f"{run}.json"
        if not path.exists():
            raise SystemExit(f"error: no saved run {run} in {out}")
        doc = json.loads(path.read_text())
        mine = [o for o in doc["outcomes"] if o["method"] in ("full", method)]
        if not any(o["method"] == method for o in mine):
            methods = sorted({o["method"] for o in doc["outcomes"]})
            raise SystemExit(f"error: run {run} has no method {method!r}; it has {', '.join(methods)}")
        for o in mine:
            name = label if o["method"] == method else "full"
            outcomes.append(RulerOutcome(**{**o, "method": name, "index": o["index"] + offset}))
        offset += 1 + max(o["index"] for o in mine)
        lengths |= {o["length"] for o in mine}
        seed = doc["settings"]["seed"]
        seeds += seed if isinstance(seed, list) else [seed]
    if len(lengths) != 1:
        raise SystemExit(f"error: pool {label} mixes lengths {sorted(lengths)}; pool runs at one length")
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"error: pool {label} names seed(s) twice ({seeds}): their samples would count twice")
    return outcomes, lengths.pop(), seeds


def main() -> None:
    """Parse the pools, pair each with its full cache, bootstrap the share, save the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pool", action="append", required=True, help="LABEL=RUN:METHOD,RUN:METHOD,...")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    rows, table = [], ["| cache | length | seeds | samples | full | cache | % of full | 95% interval |",
                       "|---|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for pool in args.pool:
        label, _, spec = pool.partition("=")
        parts = [tuple(p.rsplit(":", 1)) for p in spec.split(",") if p]
        if not label or label == "full" or not parts or any(len(p) != 2 for p in parts):
            raise SystemExit(f"error: --pool {pool!r} is not LABEL=RUN:METHOD,RUN:METHOD,... (LABEL not 'full')")
        outcomes, length, seeds = pooled(args.model, parts, label)
        pairs = paired_scores(outcomes, label, length)
        full, mine, low, high = share_interval(pairs)
        share = mine / max(full, 1e-9)
        samples = sum(map(len, pairs.values()))
        rows.append({"label": label, "length": length, "seeds": seeds, "parts": [list(p) for p in parts],
                     "samples": samples, "full": full, "cache": mine, "share": share,
                     "interval": [low, high]})  # fmt: skip
        table.append(f"| {label} | {length} | {' + '.join(map(str, seeds))} | {samples} | {full:.1f} | {mine:.1f} | "
                     f"{share:.0%} | {low:.0%}-{high:.0%} |")  # fmt: skip
    out = results_dir(args.model, "ruler")
    write_json(out / f"{args.name}.json", {"command": command(), "rows": rows})
    about = (
        f"`{command()}` — each cache's RULER average (mean over tasks) against the full cache's on the same samples; "
        "95% interval of the share by a paired bootstrap (10,000 draws, each task's samples redrawn)."
    )
    write_markdown(out / f"{args.name}.md", f"RULER share of full · {args.model}", about, table)


if __name__ == "__main__":
    run_main(main)
