"""`headwise ruler`: RULER's tasks made with the model's tokenizer, answered with caches or the reader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headwise.cli.common import (
    READER_DEFAULTS,
    Chunk,
    Copy,
    Device,
    Dtype,
    Focus,
    Heads,
    Keep,
    Model,
    Pool,
    Top,
    Unit,
    _numbers,
    app,
    heads_map,
    load,
    reader_config,
    slug,
    user_errors,
)
from headwise.core.models import DEFAULT_MODEL, SHIPPED_WINDOWS, check_dtype
from headwise.core.policy import SINK, WINDOW, CachePolicy
from headwise.errors import HeadwiseError


@app.command("ruler")
@user_errors
def ruler_cmd(
    model: Model = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: Device = None,
    lengths: Annotated[str, typer.Option(help="RULER lengths in tokens (prompt + answer), comma-separated")] = "4096",
    tasks: Annotated[str, typer.Option(help="RULER task names, comma-separated, or all (the 13)")] = "all",
    samples: Annotated[int, typer.Option(help="samples per task and length")] = 25,
    seed: Annotated[int, typer.Option(help="seed of RULER's generators")] = 42,
    cache: Annotated[
        str, typer.Option(help="KV caches, comma-separated: full, headwise, window (one prefill serves them all)")
    ] = "full",
    budget: Annotated[float, typer.Option(help="KV budget as a share of the full cache (headwise, window)")] = 0.3,
    headmap: Annotated[
        Path | None, typer.Option(help="head map ranking KV heads for --cache headwise; default: the shipped one")
    ] = None,
    sink: Annotated[int, typer.Option(help="sink tokens kept by windowed heads")] = SINK,
    window: Annotated[int, typer.Option(help="least recent tokens kept by windowed heads")] = WINDOW,
    reader: Annotated[str, typer.Option(help="none, or headwise: read beyond the window with read()")] = "none",
    heads: Heads = "retrieval",
    top: Top = str(READER_DEFAULTS.top),
    chunk: Chunk = READER_DEFAULTS.chunk,
    keep: Keep = READER_DEFAULTS.keep,
    unit: Unit = READER_DEFAULTS.unit,
    pool: Pool = READER_DEFAULTS.pool,
    focus: Focus = READER_DEFAULTS.focus,
    copy: Copy = READER_DEFAULTS.copy,
    out: Annotated[Path | None, typer.Option(help="folder for results.json, table.md and scores.png")] = None,
) -> None:
    """Run RULER (NVIDIA's generators and metrics) on the model: results JSON, a per-task table and a plot.

    Samples are made once per (task, length, seed) with the model's tokenizer and cached. Without --reader,
    lengths must fit the model's window; with --reader headwise any length is read through read()."""
    from headwise.eval.ruler_data import check_tasks, package_dir

    if reader not in ("none", "headwise"):
        raise HeadwiseError(f"--reader must be none or headwise, got {reader!r}")
    kinds = [k.strip() for k in cache.split(",") if k.strip()]
    if reader != "none" and kinds != ["full"]:
        raise HeadwiseError("--reader and --cache cannot be combined; the reader keeps its own context")
    policies = [CachePolicy(k, budget, sink, window) for k in kinds]
    sizes = _numbers(lengths, int, "lengths")
    if min(sizes) < 1024:
        raise HeadwiseError(f"RULER's tasks need at least 1024 tokens, got --lengths {lengths}")
    if samples < 1:
        raise HeadwiseError(f"--samples must be at least 1, got {samples}")
    names = check_tasks(tasks)
    package_dir()  # the generators are installed
    config = reader_config(top, chunk, keep, unit, pool, focus, copy) if reader == "headwise" else None
    window = SHIPPED_WINDOWS.get(model)
    if config is None and window and max(sizes) > window:
        raise HeadwiseError(
            f"--lengths {max(sizes)} exceeds {model}'s window of {window} tokens (RULER's lengths include the "
            "answer); use lengths up to that, or --reader headwise to read beyond it"
        )
    check_dtype(dtype)
    import headwise as hw
    from headwise.eval.ruler import run_ruler

    m, tok = load(model, dtype, device)
    if config is not None:
        result = run_ruler(m, tok, names, sizes, samples, headmap=heads_map(heads, model, m), reader=config, seed=seed)
    else:
        ranking = hw.HeadMap.load(headmap, m) if headmap else None
        result = run_ruler(m, tok, names, sizes, samples, policies, ranking, seed=seed)
    methods = "+".join(result.methods()).replace("%", "")
    folder = out or Path("runs") / f"ruler-{slug(model)}-{methods}-{'-'.join(map(str, sizes))}-s{seed}"
    path = result.save(folder / "results.json")
    (folder / "table.md").write_text(result.markdown() + "\n")
    png = result.plot(folder / "scores.png")
    typer.echo(result.markdown())
    typer.echo(f"wrote {path}, {folder / 'table.md'} and {png}", err=True)
