"""What every command shares: the app, option types, argument parsing and checks made before a model loads."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from headwise.apps.config import ReaderConfig
from headwise.core.models import SHIPPED_WINDOWS, check_lengths
from headwise.errors import HeadwiseError
from headwise.eval.grids import ABLATE_GRID, NIAH_GRID, PROFILE_GRID, NeedleGrid

if TYPE_CHECKING:
    from headwise.core.headmap import HeadMap

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Find retrieval heads and put them to work.")
READER_DEFAULTS = ReaderConfig()

Model = Annotated[str, typer.Option(help="smollm2-135m, gemma3-270m, a Hugging Face id, a model directory or a .gguf")]
Dtype = Annotated[str, typer.Option(help="float32, bfloat16 or float16")]
Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, mps or auto (spread over devices); default: best")]
Lengths = Annotated[str, typer.Option(help="context lengths in tokens, comma-separated")]
Depths = Annotated[str, typer.Option(help="needle depths as fractions (0 = start, 1 = end), comma-separated")]
Needles = Annotated[int, typer.Option(help="how many different needles per (length, depth)")]
NeedlesFile = Annotated[Path | None, typer.Option(help="JSON list of {needle, question, answer}; default: shipped")]
Haystack = Annotated[str, typer.Option(help="frankenstein, pride-and-prejudice, moby-dick, or a UTF-8 text file")]
Seed = Annotated[int, typer.Option(help="seed for where each test's prose starts and for random draws")]
Heads = Annotated[str, typer.Option(help="heads to read with: retrieval (the shipped map), all, or a head map file")]
Top = Annotated[str, typer.Option("--top", "--k", help="how many top heads: a count (14) or a share (5%)")]
Chunk = Annotated[int, typer.Option(help="new tokens read per step")]
Keep = Annotated[int, typer.Option(help="tokens carried between steps and answered from")]
Unit = Annotated[str, typer.Option(help="what is kept: sentence, block (16 tokens) or token")]
Pool = Annotated[str, typer.Option(help="a unit's score from its tokens' attention: sum, max or mean")]
Html = Annotated[Path | None, typer.Option(help="also write the result as a self-contained HTML report")]
Focus = Annotated[float, typer.Option(help="answer from kept passages scoring at least this share of the best")]
Copy = Annotated[
    bool, typer.Option("--copy/--no-copy", help="the answer's numbers, codes and names are copied from the passages")
]


def user_errors(fn: Callable) -> Callable:
    """Print HeadwiseError as one `error:` line on stderr and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HeadwiseError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _numbers(text: str, kind: type, what: str) -> tuple:
    """Parse '500,1000' into numbers of `kind`."""
    try:
        values = tuple(kind(x) for x in re.split(r"[,\s]+", text.strip()) if x)
    except ValueError:
        raise HeadwiseError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise HeadwiseError(f"--{what} is empty")
    return values


def _csv(values: tuple) -> str:
    return ",".join(str(v) for v in values)


PROFILE_LENGTHS, PROFILE_DEPTHS = _csv(PROFILE_GRID.lengths), _csv(PROFILE_GRID.depths)
ABLATE_LENGTHS, ABLATE_DEPTHS = _csv(ABLATE_GRID.lengths), _csv(ABLATE_GRID.depths)
NIAH_LENGTHS, NIAH_DEPTHS = _csv(NIAH_GRID.lengths), _csv(NIAH_GRID.depths)


def grid_from(default: NeedleGrid, lengths: str, depths: str, needles: int, haystack: str, seed: int) -> NeedleGrid:
    """The needle grid the options describe (checked: depths in [0, 1], lengths long enough)."""
    return replace(
        default,
        lengths=_numbers(lengths, int, "lengths"),
        depths=_numbers(depths, float, "depths"),
        needles=needles,
        haystack=haystack,
        seed=seed,
    )


def check_window(model: str, lengths: tuple[int, ...]) -> None:
    """Refuse lengths beyond a shipped model's window before it loads (other models are checked after)."""
    if model in SHIPPED_WINDOWS:
        check_lengths(SHIPPED_WINDOWS[model], list(lengths), model)


def grid_tests(grid: NeedleGrid, needles_file: Path | None, tokenizer, extra: list | None = None) -> list:
    """The grid's tests over the chosen needles, plus `extra` needles (e.g. made-up names)."""
    from headwise.eval.haystack import load_haystack
    from headwise.eval.tasks import load_needles, make_tests, pick_needles

    needles = pick_needles(load_needles(needles_file), grid.needles, grid.held_out) + (extra or [])
    haystack = load_haystack(grid.haystack)
    return make_tests(tokenizer, haystack, needles, list(grid.lengths), list(grid.depths), grid.seed)


def prepare_grid(grid: NeedleGrid, needles_file: Path | None) -> None:
    """Read the haystack and needles before the model loads, so that bad files fail fast."""
    from headwise.eval.haystack import load_haystack
    from headwise.eval.tasks import load_needles, pick_needles

    load_haystack(grid.haystack)
    pick_needles(load_needles(needles_file), grid.needles, grid.held_out)


def load(model: str, dtype: str, device: str | None):
    from headwise.core.models import load_model

    return load_model(model, dtype, device)


def heads_map(heads: str, model_name: str, model) -> HeadMap | None:
    """The map `--heads` names: the shipped retrieval map, None for every head, or a file."""
    from headwise.core.headmap import HeadMap
    from headwise.core.shipped import shipped_headmap

    if heads == "all":
        return None
    headmap = shipped_headmap(model_name) if heads == "retrieval" else HeadMap.load(Path(heads), model)
    headmap.check_model(model)
    return headmap


def reader_config(top: str, chunk: int, keep: int, unit: str, pool: str, focus: float, copy: bool) -> ReaderConfig:
    return ReaderConfig(top=top, chunk=chunk, keep=keep, unit=unit, pool=pool, focus=focus, copy=copy)


def slug(name: str) -> str:
    """A file-name-safe form of a model name or setting."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name.removesuffix(".gguf")) or "model"
