"""The needle-test commands: profile (score heads), ablate (mask them), niah (run a grid with a cache or the reader)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from headwise.cli.common import (
    ABLATE_DEPTHS,
    ABLATE_LENGTHS,
    NIAH_DEPTHS,
    NIAH_LENGTHS,
    PROFILE_DEPTHS,
    PROFILE_LENGTHS,
    READER_DEFAULTS,
    Chunk,
    Copy,
    Depths,
    Device,
    Dtype,
    Focus,
    Haystack,
    Heads,
    Html,
    Keep,
    Lengths,
    Model,
    Needles,
    NeedlesFile,
    Pool,
    Seed,
    Top,
    Unit,
    app,
    check_window,
    grid_from,
    grid_tests,
    heads_map,
    load,
    prepare_grid,
    reader_config,
    slug,
    user_errors,
)  # fmt: skip
from headwise.core.models import DEFAULT_MODEL, check_dtype
from headwise.core.policy import SINK, WINDOW, CachePolicy
from headwise.errors import HeadwiseError
from headwise.eval.grids import ABLATE_GRID, NIAH_GRID, PROFILE_GRID


@app.command("profile")
@user_errors
def profile_cmd(
    model: Model = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: Device = None,
    lengths: Lengths = PROFILE_LENGTHS,
    depths: Depths = PROFILE_DEPTHS,
    needles: Needles = PROFILE_GRID.needles,
    needles_file: NeedlesFile = None,
    haystack: Haystack = PROFILE_GRID.haystack,
    seed: Seed = 0,
    score: Annotated[
        str,
        typer.Option(
            help="retrieval (copy-paste attention, Wu et al.), context (output change under sink + window) or "
            "gates (DuoAttention-style gates trained so that sink + window changes the answers least); or "
            "relevance (each head's own nDCG@10 ranking labelled queries' BM25 candidates: --queries, --docs, --qrels)"
        ),
    ] = "retrieval",
    sink: Annotated[int, typer.Option(help="--score context|gates: sink tokens of the window view")] = SINK,
    window: Annotated[int, typer.Option(help="--score context|gates: recent tokens of the window view")] = WINDOW,
    names: Annotated[int, typer.Option(help="--score gates: made-up-name needles added to the training set")] = 3,
    queries: Annotated[Path | None, typer.Option(help="--score relevance: JSONL of {_id, text} queries")] = None,
    docs: Annotated[Path | None, typer.Option(help="--score relevance: JSONL corpus of {_id, title, text}")] = None,
    qrels: Annotated[Path | None, typer.Option(help="--score relevance: TSV of query-id, doc-id, score")] = None,
    limit: Annotated[int, typer.Option(help="--score relevance: use the first N query ids of the qrels")] = 400,
    candidates: Annotated[int, typer.Option(help="--score relevance: BM25 candidates per query")] = 20,
    out: Annotated[Path | None, typer.Option(help="head map JSON to write; a heatmap PNG goes beside it")] = None,
    html: Html = None,
) -> None:
    """Score every attention head on needle tests (or, --score relevance, on labelled queries); write a head
    map and its heatmap."""
    from headwise.scores import SCORES

    if score == "relevance":
        headmap = _relevance_map(model, dtype, device, queries, docs, qrels, limit, candidates)
        path = headmap.save(out or Path("headmaps") / f"{slug(model)}-relevance.json")
        tuned = headmap.method
        reading = tuned["reading"]
        typer.echo(
            f"{tuned['queries']} queries; top {tuned['top']} heads reading {reading['rows']} rows"
            f"{', outlier tokens dropped' if reading['drop_outliers'] else ''}: nDCG@10 {tuned['ndcg@10']}, "
            f"fused with BM25 at weight {tuned['fusion']['weight']}"
        )
        typer.echo(f"wrote {path} and {headmap.plot(path.with_suffix('.png'))}")
        if html:
            from headwise.reports import report

            typer.echo(f"wrote {report([headmap], html)}")
        return
    if score not in SCORES:
        raise HeadwiseError(f"--score must be one of {', '.join(SCORES)} or relevance, got {score!r}")
    if names < 0:
        raise HeadwiseError(f"--names must be 0 or more, got {names}")
    grid = grid_from(PROFILE_GRID, lengths, depths, needles, haystack, seed)
    check_window(model, grid.lengths)
    prepare_grid(grid, needles_file)
    check_dtype(dtype)
    import headwise as hw

    m, tok = load(model, dtype, device)
    if score == "gates":
        from headwise.eval.tasks import name_needles

        tests = grid_tests(grid, needles_file, tok, name_needles(names, seed))
    else:
        tests = grid_tests(grid, needles_file, tok)
    options: dict = {} if score == "retrieval" else {"sink": sink, "window": window}
    headmap = hw.profile(m, tok, tests, score, **options)
    path = headmap.save(out or Path("headmaps") / f"{slug(model)}{'' if score == 'retrieval' else '-' + score}.json")
    png = headmap.plot(path.with_suffix(".png"))
    typer.echo(headmap.summary())
    if "tests_counted" in headmap.method:
        typer.echo(f"{headmap.method['tests_counted']}/{headmap.method['tests']} tests answered correctly and counted")
    typer.echo(f"wrote {path} and {png}")
    if html:
        typer.echo(f"wrote {hw.report([headmap], html)}")


def _relevance_map(model: str, dtype: str, device, queries, docs, qrels, limit: int, candidates: int):
    """A relevance head map from labelled queries, their files checked before the model loads."""
    from headwise.apps.rank import load_docs
    from headwise.eval.relevance import load_qrels, load_queries, profile_relevance

    if None in (queries, docs, qrels):
        raise HeadwiseError("--score relevance needs --queries, --docs and --qrels (labelled training queries)")
    if limit < 1 or candidates < 2:
        raise HeadwiseError(f"need --limit >= 1 and --candidates >= 2, got {limit} and {candidates}")
    texts, corpus, relevant = load_queries(queries), load_docs(docs), load_qrels(qrels)
    check_dtype(dtype)
    m, tok = load(model, dtype, device)
    return profile_relevance(m, tok, texts, corpus, relevant, limit, candidates)


def _ablation_table(results: list, tests: int) -> str:
    """The top vs random table, then the heads each row masked."""
    first = results[0]
    lines = [
        f"{tests} held-out needle tests; {first.count} heads masked per row; "
        f"no masking: {'-' if first.baseline is None else f'{first.baseline:.0%}'}",
        f"{'mode':8} {'top masked':>11}  {'random masked, each draw':<34} {'mean':>5}",
    ]
    for r in results:
        top = "-" if r.top is None else f"{r.top:.0%}"
        draws = " ".join(f"{a:.0%}" for a in r.random) or "-"
        mean = "-" if r.random_mean is None else f"{r.random_mean:.0%}"
        lines.append(f"{r.mode:8} {top:>11}  {draws:<34} {mean:>5}")
    lines.append("top heads: " + " ".join(f"L{l}H{h}" for l, h in first.top_heads))
    for i, heads in enumerate(first.random_heads, 1):
        lines.append(f"draw {i}:    " + " ".join(f"L{l}H{h}" for l, h in heads))
    return "\n".join(lines)


@app.command("ablate")
@user_errors
def ablate_cmd(
    headmap: Annotated[
        str, typer.Argument(help="retrieval (the shipped map), or a headwise JSON, Retrieval_Head JSON or Duo TSV")
    ] = "retrieval",
    model: Annotated[str | None, typer.Option(help="model to test; default: the one the head map names")] = None,
    dtype: Dtype = "float32",
    device: Device = None,
    top: Top = "5%",
    draws: Annotated[int, typer.Option(help="random head sets to mask")] = 3,
    exclude: Annotated[str, typer.Option(help="random heads are drawn from outside this top share")] = "10%",
    mode: Annotated[str, typer.Option(help="uniform (flat attention when decoding), zero (output removed) or both")] = (
        "uniform"
    ),
    lengths: Lengths = ABLATE_LENGTHS,
    depths: Depths = ABLATE_DEPTHS,
    needles: Needles = ABLATE_GRID.needles,
    needles_file: NeedlesFile = None,
    haystack: Haystack = ABLATE_GRID.haystack,
    seed: Seed = 0,
    out: Annotated[
        Path | None, typer.Option(help="folder for ablation.json (kept up to date) and ablation.png")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Mask the map's top heads, then as many random heads, and compare needle accuracy."""
    from headwise.core.headmap import HeadMap
    from headwise.core.masks import MODES

    modes = MODES if mode == "both" else (mode,)
    if not set(modes) <= set(MODES):
        raise HeadwiseError(f"--mode must be uniform, zero or both, got {mode!r}")
    if draws < 1:
        raise HeadwiseError("--draws must be at least 1")
    if headmap != "retrieval":
        if model is None and (headmap.endswith(".tsv") or headmap.endswith(".rh.json")):
            raise HeadwiseError(f"{headmap} does not name its model; pass --model")
        if model is None:
            preview = HeadMap.load(headmap)
            preview.count(top)
            model = preview.model
    model = model or DEFAULT_MODEL
    grid = grid_from(ABLATE_GRID, lengths, depths, needles, haystack, seed)
    check_window(model, grid.lengths)
    prepare_grid(grid, needles_file)
    check_dtype(dtype)
    import headwise as hw

    m, tok = load(model, dtype, device)
    hm = hw.shipped_headmap(model) if headmap == "retrieval" else hw.HeadMap.load(headmap, m)
    tests = grid_tests(grid, needles_file, tok)
    folder = out or Path("runs") / f"ablate-{slug(model)}-{hm.kind}-top{slug(top)}-s{seed}"
    about = {"headmap": headmap, "model": model, "tests": len(tests), "grid": asdict(grid)}

    def save(results: list) -> None:
        from headwise.eval.ablate import ablation_document

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ablation.json").write_text(json.dumps(ablation_document(results, **about), indent=1))

    partial: list = []

    def update(results: list) -> None:
        partial[:] = results
        save(results)

    try:
        results = hw.ablate(m, tok, hm, tests, top, draws, exclude, modes, seed, on_update=update)
    except KeyboardInterrupt:
        typer.echo("stopped; the results so far:", err=True)
        if partial:
            typer.echo(_ablation_table(partial, len(tests)))
            typer.echo(f"kept in {folder / 'ablation.json'}", err=True)
        raise typer.Exit(130) from None
    from headwise.plots import ablation_bars

    rows = [{"mode": r.mode, "baseline": r.baseline, "top": r.top, "random": r.random} for r in results]
    png = ablation_bars(rows, f"{model}: top {results[0].count} vs random heads masked", folder / "ablation.png")
    if as_json:
        typer.echo((folder / "ablation.json").read_text())
        return
    typer.echo(_ablation_table(results, len(tests)))
    typer.echo(f"wrote {folder / 'ablation.json'} and {png}", err=True)


@app.command("niah")
@user_errors
def niah_cmd(
    model: Model = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: Device = None,
    lengths: Lengths = NIAH_LENGTHS,
    depths: Depths = NIAH_DEPTHS,
    needles: Needles = NIAH_GRID.needles,
    needles_file: NeedlesFile = None,
    haystack: Haystack = NIAH_GRID.haystack,
    seed: Seed = 0,
    cache: Annotated[str, typer.Option(help="KV cache: full, headwise (top KV heads full) or window")] = "full",
    budget: Annotated[float, typer.Option(help="KV budget as a share of the full cache (headwise, window)")] = 0.3,
    headmap: Annotated[
        Path | None, typer.Option(help="head map ranking KV heads for --cache headwise; default: the shipped one")
    ] = None,
    sink: Annotated[int, typer.Option(help="sink tokens kept by windowed heads")] = SINK,
    window: Annotated[int, typer.Option(help="least recent tokens kept by windowed heads")] = WINDOW,
    reader: Annotated[
        str, typer.Option(help="none, or headwise: read beyond the window (the reader options below)")
    ] = "none",
    heads: Heads = "retrieval",
    top: Top = str(READER_DEFAULTS.top),
    chunk: Chunk = READER_DEFAULTS.chunk,
    keep: Keep = READER_DEFAULTS.keep,
    unit: Unit = READER_DEFAULTS.unit,
    pool: Pool = READER_DEFAULTS.pool,
    focus: Focus = READER_DEFAULTS.focus,
    copy: Copy = READER_DEFAULTS.copy,
    out: Annotated[Path | None, typer.Option(help="folder for results.json and heatmap.png")] = None,
) -> None:
    """Run a needle-in-a-haystack grid (lengths x depths); write results JSON and the accuracy heatmap.

    With --reader headwise, contexts of any length are read in chunks through the --heads' --top heads
    (--chunk, --keep, --unit, --pool, --focus); otherwise lengths must fit the model's window."""
    if reader not in ("none", "headwise"):
        raise HeadwiseError(f"--reader must be none or headwise, got {reader!r}")
    if reader != "none" and cache != "full":
        raise HeadwiseError("--reader and --cache cannot be combined; the reader keeps its own context")
    policy = CachePolicy(cache, budget, sink, window)
    config = reader_config(top, chunk, keep, unit, pool, focus, copy) if reader == "headwise" else None
    grid = grid_from(NIAH_GRID, lengths, depths, needles, haystack, seed)
    if config is None:
        check_window(model, grid.lengths)
    prepare_grid(grid, needles_file)
    check_dtype(dtype)
    import headwise as hw

    m, tok = load(model, dtype, device)
    tests = grid_tests(grid, needles_file, tok)
    if config is not None:
        result = hw.run_niah(m, tok, tests, headmap=heads_map(heads, model, m), reader=config)
    else:
        ranking = hw.HeadMap.load(headmap, m) if headmap else None
        result = hw.run_niah(m, tok, tests, cache=policy, headmap=ranking)
    method = result.settings["method"].replace("%", "")
    span = f"{min(grid.lengths)}-{max(grid.lengths)}"
    folder = out or Path("runs") / f"niah-{slug(model)}-{method}-{span}-{slug(grid.haystack)}-s{seed}"
    path = result.save(folder / "results.json")
    png = result.plot(folder / "heatmap.png")
    held = f", KV held {result.kv_ratio:.0%} of the full cache" if result.kv_ratio is not None else ""
    typer.echo(f"{method}: accuracy {result.accuracy:.0%} over {len(result.outcomes)} tests{held}")
    typer.echo(f"wrote {path} and {png}", err=True)
