"""RULER with every headwise cache at several KV budgets, each sample prefilled once (run_ruler derives every
cache from that prefill), scored by RULER's metrics.

    python -m bench.ruler --model smollm2-135m --lengths 4096 --samples 5      # ~45 min on 2 CPU cores (fp32)
    python -m bench.ruler --seed 7 --samples 3 --headwise 0.3 --maps gates=gates,retrieval=retrieval  # rankings
    python -m bench.ruler --reader --lengths 32768 --tasks niah_single_1,niah_single_2 --samples 2 \
        --against ruler-4096-10       # the reader beyond the window, next to the full cache's scores at 4K
    python -m bench.ruler --merge ruler-4096-10,ruler-4096-10-seed43 --name ruler-4096-20   # runs on two seeds

Methods: the full cache; `headwise-B` (the default ranking's top KV heads in full, sink + window for the
rest, within budget B; with --maps, `headwise[name]-B` for each head map named); `window-B` (sink + recent
window on every head, StreamingLLM); with --reader, read() through the shipped retrieval map's heads at any
length, counting answers in the evidence given to the model apart from answers right, each task's score
next to the full cache's in the run --against. Writes
bench/results/<model>/ruler/<--name>.json (every outcome), .md (per-task table, answers kept/lost/won vs the
full cache) and .png (RULER average vs KV budget). --merge joins saved runs made on other seeds (or their
kvpress files) into one, keeping the methods every part answered.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np

import headwise as hw
from bench.common import command as this_command
from bench.common import matmul_tflops, prefill_tflop, results_dir, write_json, write_markdown
from headwise.core.policy import CachePolicy
from headwise.core.prompts import reading_prompt
from headwise.eval.ruler import run_ruler

PRESS_COLUMNS = (  # what a kvpress row's columns mean, in every file that holds one
    "'s per answer' = its prefill + decoding, timed in its own run (on another day than the saved run's rows, "
    "perhaps: this machine's speed varies up to 5x from day to day); a press's 'KV held' is the share of the "
    "context's KV entries it held after answering (its own count)."
)


def kept_lost(result, method: str) -> tuple[int, int, int]:
    """(answers kept, lost, won) by `method` against the full cache: a sample counts as right at score 100."""
    full = {(o.task, o.length, o.index): o.score == 100 for o in result.outcomes if o.method == "full"}
    mine = {(o.task, o.length, o.index): o.score == 100 for o in result.outcomes if o.method == method}
    kept = sum(full[k] and mine[k] for k in mine)
    lost = sum(full[k] and not mine[k] for k in mine)
    won = sum(mine[k] and not full[k] for k in mine)
    return kept, lost, won


def share_interval(
    pairs: dict[str, np.ndarray], draws: int = 10_000, seed: int = 0
) -> tuple[float, float, float, float]:
    """(full cache's RULER average, the method's, low, high) from `pairs` (task -> rows of (full, method) scores
    on the same samples): [low, high] is the 95% interval of the method's share of full by a paired bootstrap
    that redraws each task's samples, so a reader sees how far the share could move on another draw."""
    rng = np.random.default_rng(seed)
    drawn = np.zeros((draws, 2))
    for scores in pairs.values():
        drawn += scores[rng.integers(0, len(scores), (draws, len(scores)))].mean(axis=1)  # (draws, 2)
    low, high = np.percentile(drawn[:, 1] / np.maximum(drawn[:, 0], 1e-9), [2.5, 97.5])
    full, mine = np.mean([scores.mean(axis=0) for scores in pairs.values()], axis=0)
    return float(full), float(mine), float(low), float(high)


def paired_scores(outcomes, method: str, length: int) -> dict[str, np.ndarray]:
    """Task -> rows of (full cache's score, `method`'s score) on the samples both answered at `length`."""
    full = {(o.task, o.index): o.score for o in outcomes if (o.method, o.length) == ("full", length)}
    pairs: dict[str, list[tuple[float, float]]] = {}
    for o in outcomes:
        if (o.method, o.length) == (method, length) and (o.task, o.index) in full:
            pairs.setdefault(o.task, []).append((full[o.task, o.index], o.score))
    return {task: np.array(rows) for task, rows in pairs.items()}


def plot_budgets(result, path, title: str) -> None:
    """RULER average vs KV budget, one line per cache kind ("headwise-30%" -> headwise), full as a line."""
    from headwise.plots import _figure, _save

    lines: dict[str, list[tuple[float, float]]] = {}
    fig, ax = _figure(6.5, 4.2)
    for (method, _), row in result.scores().items():
        if method == "full":
            ax.axhline(row["average"], color="black", linestyle="--", label="full cache")
        else:
            kind, budget = method.rsplit("-", 1)
            lines.setdefault(kind, []).append((float(budget.rstrip("%")), row["average"]))
    for kind, points in lines.items():
        width = 2.5 if kind == "headwise" else 1.2
        ax.plot(*zip(*sorted(points), strict=True), marker="o", label=kind, linewidth=width)
    ax.set_xlabel("KV budget (% of the full cache)")
    ax.set_ylabel("RULER average")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def efficiency(result, config) -> str:
    """The prefill's throughput as a share of one large matmul's, both measured now on this machine."""
    timed = [o for o in result.outcomes if o.prefill_seconds]
    if not timed:
        return ""
    ceiling = matmul_tflops(result.settings["dtype"])
    done = sum(prefill_tflop(config, o.prompt_tokens) for o in timed) / sum(o.prefill_seconds for o in timed)
    return (
        f" Prefill reached {done:.3f} TFLOP/s, {done / ceiling:.0%} of a {result.settings['dtype']} 2048^3 matmul "
        f"on this machine in the same run ({ceiling:.3f} TFLOP/s)."
    )


def reader_shape(model_name: str, tokenizer, config) -> tuple[int, int]:
    """(layers a reader pass runs: up to the last of the shipped retrieval map's chosen heads, tokens of the
    reading prompt around a RULER-sized question)."""
    layers = 1 + max(layer for layer, _ in hw.shipped_headmap(model_name).top(config.top))
    return layers, sum(map(len, reading_prompt(tokenizer, "a question of about twenty tokens, as RULER's are")))


def reader_efficiency(result, config, layers: int, prompt: int) -> str:
    """The reader's estimated throughput as a share of one large matmul's, measured now: each sample is
    ceil(input / chunk) + 1 passes of chunk + keep + prompt tokens through the `layers` layers up to its last
    chosen head (the time also holds the answer's decoding, so the share is a floor)."""
    settings = result.settings["reader"]
    chunk, keep = settings["chunk"], settings["keep"]
    per_pass = prefill_tflop(config, chunk + keep + prompt) * layers / config.num_hidden_layers
    work = sum((math.ceil(o.prompt_tokens / chunk) + 1) * per_pass for o in result.outcomes)
    seconds = sum(o.seconds for o in result.outcomes)
    ceiling = matmul_tflops(result.settings["dtype"])
    tokens = sum(o.prompt_tokens for o in result.outcomes) / seconds
    return (
        f" The reader (passes of {chunk} + {keep} + {prompt} tokens through {layers} of {config.num_hidden_layers}"
        f" layers) ran at an estimated {work / seconds:.3f} TFLOP/s, {work / seconds / ceiling:.0%} of a "
        f"{result.settings['dtype']} 2048^3 matmul in the same run ({ceiling:.3f} TFLOP/s): {tokens:.0f} input "
        f"tokens/s where the matmul's rate would read {tokens * ceiling * seconds / work:.0f}."
    )


def cache_rows(result) -> list[str]:
    """Each cache against the full cache: RULER average, share of full with its 95% interval (paired bootstrap
    over samples), KV held, answers kept/lost/won."""
    scores = result.scores()
    full = {n: row["average"] for (m, n), row in scores.items() if m == "full"}
    rows = ["| method | length | RULER average | % of full | 95% interval | KV held | kept / lost / won vs full | "
            "s per answer |", "|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for (method, length), row in scores.items():
        if length not in full:
            continue
        ratio = result.kv_ratio(method)
        k, lost, won = kept_lost(result, method)
        secs = np.mean([o.seconds for o in result.outcomes if o.method == method])
        *_, low, high = share_interval(paired_scores(result.outcomes, method, length))
        rows.append(
            f"| {method} | {length} | {row['average']:.1f} | {row['average'] / max(full[length], 1e-9):.0%} | "
            f"{'–' if method == 'full' else f'{low:.0%}-{high:.0%}'} | {'–' if ratio is None else f'{ratio:.0%}'} "
            f"| {k} / {lost} / {won} | {secs:.2f} |"
        )
    return rows


def reader_rows(result, reference: dict | None) -> list[str]:
    """Per (length, task): the reader's score next to the full cache's at `reference`'s length (how much of
    the short-context skill survives length, as NoLiMa reports it), answers in the evidence given to the
    model apart from answers right, and time per sample."""
    base = {(r["length"], t): v for r in (reference or {}).get("scores", []) if r["method"] == "full"
            for t, v in r.items() if t not in ("method", "length")}  # fmt: skip
    short = min((n for n, _ in base), default=None)
    rows = [f"| length | task | reader | full cache at {short or '–'} | % of it | answers in the evidence given | "
            "answers right | s per sample | tokens/s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for (_, length), row in result.scores().items():
        for task, value in row.items():
            mine = [o for o in result.outcomes if o.length == length and task in (o.task, "average")]
            secs = np.mean([o.seconds for o in mine])
            ref = base.get((short, task))
            share = f"{value / ref:.0%}" if ref else "–"
            name = f"**{task}**" if task == "average" else task
            rows.append(
                f"| {length} | {name} | {value:.1f} | {'–' if ref is None else f'{ref:.1f}'} | {share} | "
                f"{sum(o.in_evidence for o in mine)}/{len(mine)} | {sum(o.score == 100 for o in mine)}/{len(mine)} "
                f"| {secs:.1f} | {np.mean([o.prompt_tokens for o in mine]) / secs:.0f} |"
            )
    return rows


def write(result, out, name: str, note: str = "", command: str | None = None, against: str | None = None) -> None:
    """The run's JSON (every outcome), markdown (summary vs the full cache, or with a reader vs the full
    cache of the saved run `against`, then per task) and plots; `command` is what made the run (default:
    this process's command line)."""
    command = command or this_command()
    reference = json.loads((out / f"{against}.json").read_text()) if against else None
    write_json(out / f"{name}.json", {"command": command, "against": against, **result.to_dict()})
    settings = result.settings
    seeds = settings["seed"] if isinstance(settings["seed"], list) else [settings["seed"]]
    about = (
        f"`{command}` — {result.model}, {settings['dtype']}, seed {' + '.join(map(str, seeds))}, "
        f"{settings['samples']} "
        f"samples per task; RULER {settings['ruler']['version']} generators and metrics. Deviations: "
        + "; ".join(f"{k}: {v}" for k, v in settings["deviations"].items())
        + ". A sample counts as right at score 100."
    )
    title = f"{result.model} · RULER {', '.join(map(str, settings['lengths']))} tokens"
    if settings.get("reader"):
        rows = reader_rows(result, reference)
        about += (f" The full cache's scores are those of run `{against}` (seed {reference['settings']['seed']})."
                  if reference else "")  # fmt: skip
        bars = [{"label": f"full cache · {r['length']}", **{k: v for k, v in r.items() if k not in ("method",
                 "length")}} for r in (reference or {}).get("scores", []) if r["method"] == "full"]  # fmt: skip
        bars += [{"label": f"{m} · {n}", **row} for (m, n), row in result.scores().items()]
        write_markdown(out / f"{name}.md", f"RULER · {result.model}", about + note, [*rows, "", result.markdown()])
        from headwise.plots import ruler_bars

        ruler_bars(bars, title, out / f"{name}-tasks.png")
        return
    timed = [o for o in result.outcomes if o.prefill_seconds]
    tokens, prefill = np.mean([o.prompt_tokens for o in timed]), np.mean([o.prefill_seconds for o in timed])
    about += (
        f" One prefill per sample ({tokens:.0f} tokens, {prefill:.1f} s, {tokens / prefill:.0f} tokens/s) serves "
        "every headwise cache; 's per answer' is each cache's decoding after it."
    )
    write_markdown(out / f"{name}.md", f"RULER · {result.model}", about + note,
                   [*cache_rows(result), "", result.markdown()])  # fmt: skip
    plot_budgets(result, out / f"{name}.png", title)
    result.plot(out / f"{name}-tasks.png")


def rewrite(model: str, name: str) -> None:
    """The markdown and plots of a saved run again (its JSON keeps its own command); the matmul ceiling is
    measured now, so the efficiency line says it was measured after the run."""
    from transformers import AutoConfig

    from headwise.core.models import resolve
    from headwise.eval.ruler import RulerOutcome, RulerResult

    out = results_dir(model, "ruler")
    doc = json.loads((out / f"{name}.json").read_text())
    if "parts" in doc["settings"]:
        raise SystemExit(f"error: run {name} is merged from other runs; make it again with --merge")
    result = RulerResult(doc["model"], [RulerOutcome(**o) for o in doc["outcomes"]], doc["settings"])
    where, gguf = resolve(model)
    config = AutoConfig.from_pretrained(where, gguf_file=gguf) if gguf else AutoConfig.from_pretrained(where)
    if result.settings.get("reader"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(where, **({"gguf_file": gguf} if gguf else {}))
        layers, prompt = reader_shape(model, tokenizer, hw.ReaderConfig(**result.settings["reader"]))
        note = reader_efficiency(result, config, layers, prompt)
    else:
        note = efficiency(result, config)
    note = note.replace("in the same run", "measured right after the run")
    write(result, out, name, note, command=doc["command"], against=doc.get("against"))


def merge(model: str, names: list[str], name: str) -> None:
    """Saved runs on other seeds (same model, lengths, tasks, dtype and deviations) as one run: each part's
    sample indices follow the previous parts', only the methods every part answered are kept, and each part's
    name, seed, samples and commands are recorded in the settings."""
    from headwise.eval.ruler import RulerOutcome, RulerResult

    out = results_dir(model, "ruler")
    if missing := [n for n in names if not (out / f"{n}.json").exists()]:
        raise SystemExit(f"error: no saved run {', '.join(missing)} in {out}")
    docs = [json.loads((out / f"{n}.json").read_text()) for n in names]
    if any("parts" in d["settings"] for d in docs):
        raise SystemExit("error: a run named is itself merged; merge its parts instead")
    same = ("lengths", "tasks", "dtype", "deviations", "ruler", "reader", "cache_ranking", "rankings",
            "kvpress_question", "kvpress_dtype")  # fmt: skip
    for n, doc in zip(names[1:], docs[1:], strict=True):
        if differ := [k for k in same if doc["settings"].get(k) != docs[0]["settings"].get(k)]:
            raise SystemExit(f"error: run {n} differs from {names[0]} in {', '.join(differ)}; merge runs made alike")
    seeds = [d["settings"]["seed"] for d in docs]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"error: the runs share a seed ({seeds}): their samples would count twice")
    methods = [m for m in dict.fromkeys(o["method"] for o in docs[0]["outcomes"])
               if all(any(o["method"] == m for o in d["outcomes"]) for d in docs[1:])]  # fmt: skip
    labels = {re.sub(r"\[.*\]", "", m) for m in methods}  # "headwise[gates]-30%" -> "headwise-30%"
    caches = [[c for c in d["settings"].get("caches") or [] if CachePolicy(**c).label in labels] for d in docs]
    if any(c != caches[0] for c in caches):
        raise SystemExit("error: the runs' caches of one name differ (sink, window or reduce); merge runs made alike")
    outcomes, offset = [], 0
    for doc in docs:
        outcomes += [RulerOutcome(**{**o, "index": o["index"] + offset}) for o in doc["outcomes"]
                     if o["method"] in methods]  # fmt: skip
        offset += doc["settings"]["samples"]
    parts = []  # each part's commands: the run's, or for a kvpress file those of the press rows kept
    for n, d in zip(names, docs, strict=True):
        rows = d["settings"].get("kvpress_rows") or {}
        commands = list(dict.fromkeys(r["command"] for m, r in rows.items() if m in methods)) or [d["command"]]
        parts.append({"name": n, "seed": d["settings"]["seed"], "samples": d["settings"]["samples"],
                      "commands": commands})  # fmt: skip
    settings = {**docs[0]["settings"], "seed": seeds, "samples": offset, "parts": parts, "caches": caches[0],
                "seconds": sum(d["settings"].get("seconds", 0) for d in docs)}  # fmt: skip
    settings.pop("kvpress_rows", None)  # each part's commands are in "parts"
    note = (
        " Merged from "
        + ", ".join(
            f"`{p['name']}` (seed {p['seed']}, {p['samples']} per task, made by "
            + " and ".join(f"`{c}`" for c in p["commands"])
            + ")"
            for p in parts
        )
        + "; times are each part's own, on the day it ran (this machine's speed varies up to 5x by day)."
    )
    if "kvpress" in settings:
        note += f" kvpress {settings['kvpress']} rows: {PRESS_COLUMNS}"
    write(RulerResult(docs[0]["model"], outcomes, settings), out, name, note)


def shipped_map(model_name: str, path: str, model):
    """The head map `path` names: "default" (what a headwise cache ranks by, `cache_headmap`), a kind of the
    model's shipped maps (retrieval, gates, cache) or a file."""
    from headwise.core.shipped import KINDS

    if path == "default":
        return hw.cache_headmap(model_name)
    return hw.shipped_headmap(model_name, path) if path in KINDS else hw.HeadMap.load(path, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", default="4096")
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--headwise", default="0.1,0.2,0.3,0.5", help="budgets of the headwise cache")
    parser.add_argument("--window", default="0.3,0.5", help="budgets of the sink + window cache")
    parser.add_argument("--maps", default="", help="compare head maps for the headwise cache: name=path,... "
                        "(path default, retrieval, gates or cache: the shipped maps)")  # fmt: skip
    parser.add_argument("--reader", action="store_true", help="read every sample with read() instead of caches")
    parser.add_argument("--no-copy", action="store_true", help="with --reader: answer without copy-constrained "
                        "decoding (the answer's value words need not come from the evidence)")  # fmt: skip
    parser.add_argument("--against", default=None, help="with --reader: a saved run (its name) whose full-cache "
                        "scores the reader's are set against, e.g. ruler-4096-10")  # fmt: skip
    parser.add_argument("--name", default=None)
    parser.add_argument("--rewrite", default=None, help="re-make the tables and plots of a saved run (its name)")
    parser.add_argument("--merge", default=None, help="join saved runs on other seeds (their names, comma-"
                        "separated) into one named --name")  # fmt: skip
    args = parser.parse_args()
    if args.rewrite:
        rewrite(args.model, args.rewrite)
        return
    if args.merge:
        if not args.name:
            raise SystemExit("error: --merge needs --name for the merged run")
        merge(args.model, args.merge.split(","), args.name)
        return
    model, tokenizer = hw.load_model(args.model, dtype=args.dtype)
    lengths = tuple(int(n) for n in args.lengths.split(","))
    if args.reader:
        config = hw.ReaderConfig(copy=not args.no_copy)
        headmap = hw.shipped_headmap(args.model)  # reader_shape reads the same map
        result = run_ruler(model, tokenizer, args.tasks, lengths, args.samples, None, headmap, config,
                           seed=args.seed)  # fmt: skip
        note = reader_efficiency(result, model.config, *reader_shape(args.model, tokenizer, config))
        name = args.name or f"ruler-reader-{'-'.join(map(str, lengths))}"
        write(result, results_dir(args.model, "ruler"), name, note, against=args.against)
        return
    caches = [CachePolicy("full")]
    caches += [CachePolicy("headwise", float(b)) for b in args.headwise.split(",") if b]
    caches += [CachePolicy("window", float(b)) for b in args.window.split(",") if b]
    rankings = {name: shipped_map(args.model, path, model) for name, path in
                (pair.split("=", 1) for pair in args.maps.split(",") if pair)}  # fmt: skip
    result = run_ruler(model, tokenizer, args.tasks, lengths, args.samples, caches, seed=args.seed, rankings=rankings)
    name = args.name or f"ruler-{'-'.join(map(str, lengths))}"
    write(result, results_dir(args.model, "ruler"), name, efficiency(result, model.config))


if __name__ == "__main__":
    main()
