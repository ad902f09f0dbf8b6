"""The `headwise` command: a thin layer over the Python API."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from transformers import PreTrainedTokenizerBase

from headwise import ablate as _ablate
from headwise import profile as _profile
from headwise.cache import WINDOW
from headwise.errors import HeadwiseError
from headwise.haystack import Haystack, load_haystack
from headwise.headmap import HeadMap
from headwise.reader import DEFAULT_CHUNK, DEFAULT_FOCUS, DEFAULT_KEEP, DEFAULT_POOL
from headwise.tasks import Needle, NeedleTest, check_grid, load_needles, make_tests, name_needles, pick_needles

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find retrieval heads and put them to work.")

Model = Annotated[
    str, typer.Option(help="smollm2-135m, gemma3-270m, a Hugging Face id, a model directory or a .gguf file")
]
Dtype = Annotated[str, typer.Option(help="float32 or bfloat16")]
Lengths = Annotated[str, typer.Option(help="context lengths in tokens, comma-separated")]
Depths = Annotated[str, typer.Option(help="needle depths as fractions (0 = start, 1 = end), comma-separated")]
Needles = Annotated[int, typer.Option(help="how many different needles per (length, depth)")]
NeedlesFile = Annotated[
    Path | None, typer.Option(help="JSON list of {needle, question, answer}; default: the shipped needles")
]
HaystackOpt = Annotated[str, typer.Option(help="frankenstein, pride-and-prejudice, moby-dick, or a UTF-8 text file")]
Seed = Annotated[int, typer.Option(help="seed for where each test's prose starts and for random draws")]
Heads = Annotated[
    str, typer.Option(help="whose attention to read: all, retrieval (the shipped head map) or a head map file")
]
Top = Annotated[str, typer.Option(help="with a head map: how many top heads to read (count or 5%)")]
Chunk = Annotated[int, typer.Option(help="new tokens read per step (--reader)")]
Keep = Annotated[int, typer.Option(help="tokens carried between steps and answered from (--reader)")]
Unit = Annotated[str, typer.Option(help="what is kept: sentence, block (16 tokens) or token (--reader)")]
Pool = Annotated[str, typer.Option(help="a unit's score from its tokens' attention: mean, sum or max (--reader)")]
Focus = Annotated[
    float, typer.Option(help="answer only from kept passages scoring at least this share of the best (--reader)")
]


def _user_errors(fn: Callable) -> Callable:
    """Print HeadwiseError as one line on stderr and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HeadwiseError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _headmap(heads: str | Path, model_name: str, model) -> HeadMap | None:
    """The head map `--heads` names: None for all heads, the shipped map for retrieval, else a file
    (a Path never equals "all" or "retrieval", so a Path is always read as a file)."""
    from headwise.headmap import shipped_headmap

    if heads == "all":
        return None
    headmap = shipped_headmap(model_name) if heads == "retrieval" else HeadMap.load(Path(heads), model)
    headmap.check_model(model)
    return headmap


def _cache_headmap(path: Path | None, model_name: str, model) -> HeadMap:
    """The head map a head-wise cache ranks KV heads by: the file given, else the shipped default for caches."""
    from headwise.headmap import cache_headmap

    headmap = HeadMap.load(path, model) if path else cache_headmap(model_name)
    headmap.check_model(model)
    return headmap


def _numbers(text: str, kind: type, what: str) -> list:
    """Parse '500,1000' into numbers of `kind`."""
    try:
        values = [kind(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        raise HeadwiseError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise HeadwiseError(f"--{what} is empty")
    return values


@dataclass
class _Grid:
    """Needle-test settings read and checked before the (slow) model load, so bad input fails fast."""

    haystack: Haystack
    needles: list[Needle]
    lengths: list[int]
    depths: list[float]
    seed: int

    def tests(self, tokenizer: PreTrainedTokenizerBase) -> list[NeedleTest]:
        """The needle tests for this tokenizer."""
        return make_tests(tokenizer, self.haystack, self.needles, self.lengths, self.depths, self.seed)


def _grid(
    haystack: str, needles: int, needles_file: Path | None, lengths: str, depths: str, seed: int, held_out: bool
) -> _Grid:
    """Read the haystack and needles; ablation and NIAH default to needles the default profile never saw."""
    grid = _Grid(
        load_haystack(haystack),
        pick_needles(load_needles(needles_file), needles, held_out),
        _numbers(lengths, int, "lengths"),
        _numbers(depths, float, "depths"),
        seed,
    )
    check_grid(grid.lengths, grid.depths)
    return grid


def _csv(values: list) -> str:
    """Defaults from the API, in the CLI's comma-separated form."""
    return ",".join(str(v) for v in values)


PROFILE_GRID = (_csv(_profile.DEFAULT_LENGTHS), _csv(_profile.DEFAULT_DEPTHS))
ABLATE_GRID = (_csv(_ablate.DEFAULT_LENGTHS), _csv(_ablate.DEFAULT_DEPTHS))


def _slug(name: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name.removesuffix(".gguf")) or "model"


@app.command("profile")
@_user_errors
def profile_cmd(
    model: Model = "smollm2-135m",
    dtype: Dtype = "float32",
    lengths: Lengths = PROFILE_GRID[0],
    depths: Depths = PROFILE_GRID[1],
    needles: Needles = _profile.DEFAULT_NEEDLES,
    needles_file: NeedlesFile = None,
    haystack: HaystackOpt = "frankenstein",
    seed: Seed = 0,
    score: Annotated[
        str,
        typer.Option(
            help="retrieval (copy-paste attention, Wu et al.), context (output change under sink + window) or "
            "gates (DuoAttention-style gates trained so that sink + window changes the answers least)"
        ),
    ] = "retrieval",
    sink: Annotated[int, typer.Option(help="--score context|gates: sink tokens of the window view")] = 4,
    window: Annotated[int, typer.Option(help="--score context|gates: recent tokens of the window view")] = WINDOW,
    names: Annotated[
        int,
        typer.Option(
            help="--score gates: needles with a made-up name as answer, added to the training needles "
            "(copying a rare word token by token needs heads that familiar answers do not)"
        ),
    ] = 3,
    out: Annotated[Path | None, typer.Option(help="head map JSON to write; a heatmap PNG is written beside it")] = None,
) -> None:
    """Score every attention head on needle tests; write a head map and its heatmap."""
    from headwise.models import load_model
    from headwise.profile import profile, profile_context, profile_gates

    if score not in ("retrieval", "context", "gates"):
        raise HeadwiseError(f"--score must be retrieval, context or gates, got {score!r}")
    grid = _grid(haystack, needles, needles_file, lengths, depths, seed, held_out=False)
    if score == "gates":
        if names < 0:
            raise HeadwiseError(f"--names must be 0 or more, got {names}")
        grid.needles += name_needles(names, seed)
    m, tok = load_model(model, dtype)
    tests = grid.tests(tok)
    if score == "context":
        headmap = profile_context(m, tok, tests, sink=sink, window=window)
    elif score == "gates":
        headmap = profile_gates(m, tok, tests, sink=sink, window=window)
    else:
        headmap = profile(m, tok, tests)
    suffix = "" if score == "retrieval" else f"-{score}"
    path = headmap.save(out or Path("headmaps") / f"{_slug(model)}{suffix}.json")
    png = headmap.plot(path.with_suffix(".png"))
    typer.echo(headmap.summary())
    if score == "retrieval":
        typer.echo(
            f"{headmap.method['tests_counted']}/{headmap.method['tests']} tests answered correctly and counted; "
            f"{headmap.method['seconds']} s"
        )
    typer.echo(f"wrote {path} and {png}")


@app.command("ablate")
@_user_errors
def ablate_cmd(
    headmap: Annotated[Path, typer.Argument(help="head map: headwise JSON, Retrieval_Head JSON or DuoAttention TSV")],
    model: Annotated[str | None, typer.Option(help="model to test; default: the one the head map names")] = None,
    dtype: Dtype = "float32",
    k: Annotated[str, typer.Option(help="heads to mask: a count (14) or a fraction (5%)")] = "5%",
    draws: Annotated[int, typer.Option(help="random head sets to mask")] = 5,
    exclude: Annotated[str, typer.Option(help="random heads are drawn from outside this top share")] = "10%",
    mode: Annotated[
        str, typer.Option(help="zero (output removed), uniform (decode-time flat attention) or both")
    ] = "both",
    lengths: Lengths = ABLATE_GRID[0],
    depths: Depths = ABLATE_GRID[1],
    needles: Needles = _ablate.DEFAULT_NEEDLES,
    needles_file: NeedlesFile = None,
    haystack: HaystackOpt = "frankenstein",
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Mask the top-k heads, then k random heads, and compare needle accuracy."""
    from headwise.ablate import MODES, ablate
    from headwise.headmap import HeadMap
    from headwise.models import load_model

    modes = MODES if mode == "both" else (mode,)
    if not set(modes) <= set(MODES):
        raise HeadwiseError(f"--mode must be zero, uniform or both, got {mode!r}")
    if model is None:
        if headmap.suffix == ".tsv" or headmap.name.endswith(".rh.json"):
            raise HeadwiseError(f"{headmap} does not name its model; pass --model")
        preview = HeadMap.load(headmap)
        preview.resolve_k(k)
        model = preview.model
    if draws < 1:
        raise HeadwiseError("--draws must be at least 1")
    grid = _grid(haystack, needles, needles_file, lengths, depths, seed, held_out=True)
    m, tok = load_model(model, dtype)
    hm = HeadMap.load(headmap, m)
    tests = grid.tests(tok)
    results = ablate(m, tok, hm, tests, k=k, draws=draws, exclude=exclude, modes=modes, seed=seed)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "headmap": str(headmap),
                    "model": model,
                    "tests": len(tests),
                    "results": [r.to_dict() for r in results],
                },
                indent=1,
            )
        )
        return
    typer.echo(
        f"{len(tests)} needle tests; masking {results[0].k} heads; baseline (no masking): {results[0].baseline:.0%}"
    )
    typer.echo(f"{'mode':8} {'top-k masked':>13} {'random-k masked (each draw)':>40} {'mean':>6}")
    for r in results:
        draws_text = " ".join(f"{a:.0%}" for a in r.random)
        typer.echo(f"{r.mode:8} {r.top:>13.0%} {draws_text:>40} {r.random_mean:>6.0%}")


@app.command("niah")
@_user_errors
def niah_cmd(
    model: Model = "smollm2-135m",
    dtype: Dtype = "float32",
    lengths: Lengths = "500,1000,2000,4000",
    depths: Depths = "0,0.25,0.5,0.75,1",
    needles: Needles = 2,
    needles_file: NeedlesFile = None,
    haystack: HaystackOpt = "frankenstein",
    seed: Seed = 0,
    cache: Annotated[
        str, typer.Option(help="KV cache: full, headwise (retrieval heads full) or window (sink+window)")
    ] = "full",
    budget: Annotated[float, typer.Option(help="KV budget as a fraction of the full cache (headwise, window)")] = 0.3,
    headmap: Annotated[
        Path | None,
        typer.Option(
            help="head map ranking KV heads for --cache headwise; default: the shipped cache map (gates, zero "
            "gates ordered by the retrieval map, 3 pairs of KV heads swapped), else the gate or retrieval map"
        ),
    ] = None,
    sink: Annotated[int, typer.Option(help="sink tokens kept by windowed heads")] = 4,
    window: Annotated[int, typer.Option(help="recent tokens kept by non-retrieval heads (--cache headwise)")] = WINDOW,
    reader: Annotated[
        str, typer.Option(help="none, or headwise: read contexts beyond the window in chunks, keeping what --heads see")
    ] = "none",
    heads: Heads = "retrieval",
    chunk: Chunk = DEFAULT_CHUNK,
    keep: Keep = DEFAULT_KEEP,
    unit: Unit = "sentence",
    pool: Pool = DEFAULT_POOL,
    focus: Focus = DEFAULT_FOCUS,
    out: Annotated[Path | None, typer.Option(help="directory for results.json and heatmap.png")] = None,
) -> None:
    """Run a needle-in-a-haystack grid (lengths x depths); write results JSON and the accuracy heatmap."""
    from headwise.cache import cache_factory
    from headwise.models import load_model
    from headwise.niah import run_niah
    from headwise.rank import head_weights
    from headwise.reader import needle_reader

    if cache not in ("full", "headwise", "window"):
        raise HeadwiseError(f"--cache must be full, headwise or window, got {cache!r}")
    if reader not in ("none", "headwise"):
        raise HeadwiseError(f"--reader must be none or headwise, got {reader!r}")
    if reader != "none" and cache != "full":
        raise HeadwiseError("--reader and --cache cannot be combined; the reader keeps its own context")
    grid = _grid(haystack, needles, needles_file, lengths, depths, seed, held_out=True)
    m, tok = load_model(model, dtype)
    tests = grid.tests(tok)
    if reader == "headwise":
        options = {"chunk": chunk, "keep": keep, "unit": unit, "pool": pool, "focus": focus}
        respond = needle_reader(m, tok, head_weights(m, _headmap(heads, model, m)), **options)
        result = run_niah(m, tok, tests, respond=respond, reader={"name": reader, "heads": heads, **options})
        method = f"reader-{unit}"
    else:
        hm = _cache_headmap(headmap, model, m) if cache == "headwise" else None
        make_cache = cache_factory(m, cache, budget, hm, sink, window)
        result = run_niah(m, tok, tests, make_cache=make_cache, cache_name=cache)
        method = cache
        if hm is not None:
            ranking = {"kind": hm.kind, "score": hm.method.get("score", ""), "tie_break": hm.method.get("tie_break")}
            result.settings["cache_ranking"] = ranking
    folder = out or Path("runs") / f"niah-{_slug(model)}-{method}"
    path = result.save(folder / "results.json")
    png = result.plot(folder / "heatmap.png")
    held = f", KV held {result.kv_ratio:.0%} of the full cache" if result.kv_ratio is not None else ""
    typer.echo(
        f"{method}: accuracy {result.accuracy:.0%} over {len(result.outcomes)} tests{held}; wrote {path} and {png}"
    )


@app.command("convert")
@_user_errors
def convert_cmd(
    source: Annotated[
        Path, typer.Argument(help="head map to read (headwise JSON, Retrieval_Head JSON, DuoAttention TSV)")
    ],
    target: Annotated[
        Path, typer.Argument(help="file to write: *.tsv = DuoAttention, *.rh.json = Retrieval_Head, else headwise JSON")
    ],
    model: Annotated[
        str | None, typer.Option(help="model the map belongs to (needed to import foreign formats)")
    ] = None,
) -> None:
    """Convert a head map between headwise, Retrieval_Head and DuoAttention formats."""
    from headwise.headmap import HeadMap
    from headwise.models import load_model

    hm = HeadMap.load(source, load_model(model)[0] if model else None)
    typer.echo(f"wrote {hm.save(target)}: {hm.summary(5)}")


@app.command("rank")
@_user_errors
def rank_cmd(
    query: Annotated[str, typer.Option(help="the query to rank documents for")],
    docs: Annotated[Path, typer.Option(help='JSONL file, one {"id", "text", optional "title"} per line')],
    model: Model = "smollm2-135m",
    dtype: Dtype = "float32",
    heads: Heads = "retrieval",
    top: Top = "5%",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Rank documents by the attention the query pays them (in-context re-ranking, two forward passes)."""
    from headwise.models import load_model
    from headwise.rank import load_docs, rank

    candidates = load_docs(docs)
    if not query.strip():
        raise HeadwiseError("--query is empty")
    m, tok = load_model(model, dtype)
    hm = _headmap(heads, model, m)
    began = time.perf_counter()
    order = rank(m, tok, query, candidates, headmap=hm, top=top)
    text = {d.id: d.text for d in candidates}
    if as_json:
        typer.echo(json.dumps([{"id": i, "score": s} for i, s in order], indent=1))
        return
    for place, (doc_id, score) in enumerate(order, 1):
        snippet = text[doc_id][:70].replace("\n", " ")
        typer.echo(f"{place:3} {score:+9.4f}  {doc_id:12}  {snippet}")
    typer.echo(f"ranked {len(order)} documents in {time.perf_counter() - began:.1f} s", err=True)


@app.command("read")
@_user_errors
def read_cmd(
    file: Annotated[Path, typer.Option(help="UTF-8 text file of any length")],
    question: Annotated[str, typer.Option(help="the question to answer from the text")],
    model: Model = "smollm2-135m",
    dtype: Dtype = "bfloat16",
    heads: Heads = "retrieval",
    top: Top = "5%",
    chunk: Chunk = DEFAULT_CHUNK,
    keep: Keep = DEFAULT_KEEP,
    unit: Unit = "sentence",
    pool: Pool = DEFAULT_POOL,
    focus: Focus = DEFAULT_FOCUS,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: answer, evidence spans and costs")] = False,
) -> None:
    """Answer a question over a text longer than the model's window, keeping what the retrieval heads attend to."""
    from headwise.models import load_model
    from headwise.reader import load_text, read

    text = load_text(file)
    if not question.strip():
        raise HeadwiseError("--question is empty; ask something the text answers")
    m, tok = load_model(model, dtype)
    answer = read(m, tok, text, question, _headmap(heads, model, m), top, chunk, keep, unit, pool, focus)
    if as_json:
        typer.echo(json.dumps({**asdict(answer), "quotes": answer.quotes(text)}, indent=1))
        return
    typer.echo(answer.text)
    for (start, _), quote in zip(answer.evidence, answer.quotes(text), strict=True):
        typer.echo(f"  [{start:>9}] {' '.join(quote.split())[:100]}", err=True)
    typer.echo(
        f"read {answer.input_tokens} tokens in {answer.chunks} chunks, {answer.seconds:.1f} s "
        f"({answer.input_tokens / answer.seconds:.0f} tokens/s)",
        err=True,
    )


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks on data you provide.")
app.add_typer(bench_app, name="bench")


@bench_app.command("rank")
@_user_errors
def bench_rank_cmd(
    data: Annotated[Path, typer.Option(help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)")],
    model: Model = "smollm2-135m",
    dtype: Dtype = "float32",
    headmap: Annotated[Path | None, typer.Option(help="head map; default: the shipped one")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate")] = "test",
    candidates: Annotated[int, typer.Option(help="BM25 candidates re-ranked per query")] = 20,
    limit: Annotated[int | None, typer.Option(help="only the first N queries")] = None,
    out: Annotated[Path, typer.Option(help="folder for rank_scifact.json, .md and .png")] = Path("runs/bench-rank"),
) -> None:
    """BM25 vs attention re-ranking (all heads, retrieval heads) on a BEIR dataset: nDCG@10 and latency."""
    import sys

    from headwise.benchmarks import load_beir, rank_benchmark, write_rank_report
    from headwise.headmap import HeadMap, shipped_headmap
    from headwise.models import load_model

    load_beir(data, split)  # fail on a wrong folder before the model loads
    m, tok = load_model(model, dtype)
    hm = HeadMap.load(headmap, m) if headmap else shipped_headmap(model)
    doc = rank_benchmark(m, tok, hm, data, split, candidates, limit)
    typer.echo(write_rank_report({"command": "headwise " + " ".join(sys.argv[1:]), **doc}, out))
