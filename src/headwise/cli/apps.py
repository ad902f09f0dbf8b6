"""The commands that put heads to work: read (beyond the window), rank (documents), convert (head map
formats) and bench (benchmarks on data a user brings)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
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
    Html,
    Keep,
    Model,
    Pool,
    Top,
    Unit,
    app,
    heads_map,
    load,
    reader_config,
    user_errors,
)  # fmt: skip
from headwise.core.models import DEFAULT_MODEL, check_dtype
from headwise.errors import HeadwiseError


@app.command("convert")
@user_errors
def convert_cmd(
    source: Annotated[Path, typer.Argument(help="head map to read: headwise JSON, Retrieval_Head JSON, Duo TSV")],
    target: Annotated[Path, typer.Argument(help="*.tsv = DuoAttention, *.rh.json = Retrieval_Head, else headwise")],
    model: Annotated[str | None, typer.Option(help="model the map belongs to (to import foreign formats)")] = None,
) -> None:
    """Convert a head map between headwise, Retrieval_Head and DuoAttention formats."""
    from headwise.core.headmap import HeadMap

    hm = HeadMap.load(source, load(model, "float32", "cpu")[0] if model else None)
    typer.echo(f"wrote {hm.save(target)}: {hm.summary(5)}")


@app.command("rank")
@user_errors
def rank_cmd(
    query: Annotated[str, typer.Option(help="the query to rank documents for")],
    docs: Annotated[Path, typer.Option(help='JSONL file, one {"id", "text", optional "title"} per line')],
    model: Model = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: Device = None,
    heads: Heads = "retrieval",
    top: Annotated[
        str | None, typer.Option("--top", "--k", help="how many top heads; default: the map's tuned count, else 5%")
    ] = None,
    fuse: Annotated[
        str, typer.Option(help='none; bm25 (over the documents given) or score (each line\'s "score") fused in')
    ] = "none",
    weight: Annotated[
        float | None, typer.Option(help="--fuse: attention's share, 0..1; default: the weight the map was tuned with")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Rank documents by the attention the query pays them (in-context re-ranking, two forward passes),
    optionally fused with a first-stage score."""
    import time

    from headwise.apps.rank import load_docs, rank

    candidates = load_docs(docs)
    if not query.strip():
        raise HeadwiseError("--query is empty")
    first_stage = _first_stage(fuse, query, docs, candidates)
    if weight is not None and not 0 <= weight <= 1:
        raise HeadwiseError(f"--weight is attention's share of the fused score, 0..1; got {weight}")
    check_dtype(dtype)
    m, tok = load(model, dtype, device)
    hm = heads_map(heads, model, m)
    began = time.perf_counter()
    order = rank(m, tok, query, candidates, headmap=hm, top=top, fuse=first_stage, weight=weight)
    if as_json:
        typer.echo(json.dumps([{"id": i, "score": s} for i, s in order], indent=1))
        return
    text = {d.id: d.text for d in candidates}
    for place, (doc_id, score) in enumerate(order, 1):
        typer.echo(f"{place:3} {score:+9.4f}  {doc_id:12}  {text[doc_id][:70].replace(chr(10), ' ')}")
    typer.echo(f"ranked {len(order)} documents in {time.perf_counter() - began:.1f} s", err=True)


def _first_stage(fuse: str, query: str, path: Path, docs: list) -> list[float] | None:
    """The first-stage scores `--fuse` names, one per document, or None."""
    if fuse == "none":
        return None
    if fuse == "bm25":
        from headwise.apps.bm25 import bm25_scores

        return bm25_scores(query, [d.text for d in docs]).tolist()
    if fuse == "score":
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("score"), (int, float))]
        if bad:
            raise HeadwiseError(f'--fuse score needs a numeric "score" on every line of {path}; line {bad[0]} has none')
        return [float(r["score"]) for r in rows]
    raise HeadwiseError(f"--fuse must be none, bm25 or score, got {fuse!r}")


@app.command("read")
@user_errors
def read_cmd(
    file: Annotated[Path, typer.Option(help="UTF-8 text file of any length")],
    question: Annotated[str, typer.Option(help="the question to answer from the text")],
    model: Model = DEFAULT_MODEL,
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 where it is fast: ~5x on CPUs with AVX-512 BF16), float32, ...")
    ] = "auto",
    device: Device = None,
    heads: Heads = "retrieval",
    top: Top = str(READER_DEFAULTS.top),
    chunk: Chunk = READER_DEFAULTS.chunk,
    keep: Keep = READER_DEFAULTS.keep,
    unit: Unit = READER_DEFAULTS.unit,
    pool: Pool = READER_DEFAULTS.pool,
    focus: Focus = READER_DEFAULTS.focus,
    copy: Copy = READER_DEFAULTS.copy,
    quotes: Annotated[int | None, typer.Option(help="show only the best N passages given to the model")] = None,
    boilerplate: Annotated[
        bool, typer.Option("--boilerplate/--skip-boilerplate", help="read a Project Gutenberg header and licence too")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: answer, passages with scores, costs")] = False,
    out: Annotated[Path | None, typer.Option(help="save the answer with its input, for headwise report")] = None,
    html: Html = None,
) -> None:
    """Answer a question over a text longer than the model's window, keeping what the retrieval heads attend to."""
    from headwise.apps.reader import read
    from headwise.core.text import load_text

    config = replace(reader_config(top, chunk, keep, unit, pool, focus, copy), skip_boilerplate=not boilerplate)
    text = load_text(file)
    if not question.strip():
        raise HeadwiseError("--question is empty; ask something the text answers")
    if quotes is not None and quotes < 1:
        raise HeadwiseError(f"--quotes must be at least 1, got {quotes}")
    check_dtype(dtype)
    m, tok = load(model, dtype, device)
    answer = read(m, tok, text, question, heads_map(heads, model, m), config)
    if out:
        typer.echo(f"wrote {answer.save(out)}", err=True)
    if html:
        from headwise.reports import report

        typer.echo(f"wrote {report([answer], html)}", err=True)
    if as_json:
        typer.echo(json.dumps(answer.to_dict(with_source=False), indent=1))
        return
    typer.echo(answer.text)
    typer.echo("from (score relative to the best passage, character offset):", err=True)
    for p in [p for p in answer.passages if p.given][:quotes]:
        typer.echo(f"  {p.score:4.2f} [{p.start:>9}] {' '.join(text[p.start : p.end].split())}", err=True)
    rate = answer.input_tokens / answer.seconds
    typer.echo(
        f"read {answer.input_tokens} tokens in {answer.chunks} chunks, {answer.seconds:.1f} s ({rate:.0f}/s)", err=True
    )


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks on data you provide.")
app.add_typer(bench_app, name="bench")


@bench_app.command("rank")
@user_errors
def bench_rank_cmd(
    data: Annotated[Path, typer.Option(help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)")],
    model: Model = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: Device = None,
    headmap: Annotated[Path | None, typer.Option(help="head map; default: the shipped one")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate")] = "test",
    candidates: Annotated[int, typer.Option(help="BM25 candidates re-ranked per query")] = 20,
    limit: Annotated[int | None, typer.Option(help="only the first N queries")] = None,
    out: Annotated[Path, typer.Option(help="folder for rank_scifact.json, .md and .png")] = Path("runs/bench-rank"),
) -> None:
    """BM25 vs attention re-ranking (all heads, retrieval heads) on a BEIR dataset: nDCG@10 and latency."""
    from headwise.core.headmap import HeadMap
    from headwise.core.shipped import shipped_headmap
    from headwise.eval.beir import load_beir, rank_benchmark, write_rank_report

    load_beir(data, split)  # fail on a wrong folder before the model loads
    check_dtype(dtype)
    m, tok = load(model, dtype, device)
    hm = HeadMap.load(headmap, m) if headmap else shipped_headmap(model)
    doc = rank_benchmark(m, tok, hm, data, split, candidates, limit)
    typer.echo(write_rank_report({"command": "headwise " + " ".join(sys.argv[1:]), **doc}, out))
