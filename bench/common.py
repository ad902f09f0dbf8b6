"""What every benchmark shares: where results go, the command that made them (quoted, so it can be pasted
back), partial reruns that keep the rows not redone, and writers for JSON, markdown and plots."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from headwise.errors import HeadwiseError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data"


def results_dir(model: str, *sub: str) -> Path:
    """bench/results/<model>/<sub...>, created."""
    path = RESULTS.joinpath(model.replace("/", "_"), *sub)
    path.mkdir(parents=True, exist_ok=True)
    return path


def command() -> str:
    """How this run was started, as a shell line: `python -m bench.<script> <args>`."""
    script = Path(sys.argv[0]).stem
    return shlex.join(["python", "-m", f"bench.{script}", *sys.argv[1:]])


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's `main`, ending bad input (a task, a head map) with one `error:` line, not a traceback."""
    try:
        main()
    except HeadwiseError as exc:
        raise SystemExit(f"error: {exc}") from None


def ruler_sample_parser(doc: str, samples: int, seeds: str, seeds_help: str) -> argparse.ArgumentParser:
    """A parser with the options that pick RULER samples (model, dtype, length, tasks, samples, seeds), for the
    scripts that read the full cache's answers on them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--samples", type=int, default=samples)
    parser.add_argument("--seeds", default=seeds, help=seeds_help)
    return parser


def merge_rows(path: Path, rows: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """A partial rerun's rows plus the saved rows of `path` it did not redo (each keeps its own command)."""
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    fresh = {key(r) for r in rows}
    kept = [{"command": old.get("command"), **r} for r in old["rows"] if key(r) not in fresh]
    return kept + rows


def write_json(path: Path, doc: dict) -> Path:
    """Write `doc` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_markdown(path: Path, heading: str, about: str, table: list[str]) -> str:
    """Write `# heading`, the paragraph `about` and a markdown table; print and return the text."""
    text = "\n".join([f"# {heading}", "", about, "", *table]) + "\n"
    path.write_text(text)
    sys.stdout.write(text)
    return text


def accuracy(model, tokenizer, tests: list, desc: str = "tests") -> float:
    """Share of needle tests answered correctly with the full cache (under whatever hooks are attached)."""
    from headwise.eval.niah import evaluate

    outcomes = evaluate(model, tokenizer, tests, desc=desc)
    return sum(o.correct for o in outcomes) / len(outcomes)


def matmul_tflops(dtype: str, size: int = 2048, repeats: int = 3, trials: int = 5) -> float:
    """What this machine's CPU/GPU does per second on one large matmul in `dtype` (TFLOP/s): the ceiling a
    model's forward pass is compared with, measured in the same run because machines vary day to day. The
    best of `trials` timings: on this shared machine one timing can come out at half the next one's."""
    import time

    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ a  # warm-up
    best = float("inf")
    for _ in range(trials):
        began = time.perf_counter()
        for _ in range(repeats):
            a @ a
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 * repeats / best / 1e12


def prefill_tflop(config, tokens: int) -> float:
    """TFLOP of one causal prefill of `tokens` tokens: 2 per weight per token in the layers (embeddings and
    the output head left out: the output head runs on the last token only), plus causal attention's two
    matmuls (QK^T and AV, half the square each)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = hidden * dim * (2 * heads + 2 * kv) + 3 * hidden * config.intermediate_size
    attention = 2 * 2 * heads * dim * tokens * tokens / 2
    return layers * (2 * per_layer * tokens + attention) / 1e12
