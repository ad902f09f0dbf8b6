"""The report command: one self-contained HTML page from any mix of result files and run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headwise.cli.common import app, user_errors
from headwise.core.policy import SINK, WINDOW


@app.command("report")
@user_errors
def report_cmd(
    runs: Annotated[
        list[Path],
        typer.Argument(help="head maps, ablation.json, niah results.json, reader answers (read --out) or run folders"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="page title; default: the models shown")] = None,
    context: Annotated[int, typer.Option(help="head maps: context length for the cache budget control")] = 8192,
    sink: Annotated[int, typer.Option(help="head maps: sink tokens of the windowed KV heads")] = SINK,
    window: Annotated[int, typer.Option(help="head maps: least recent tokens of the windowed KV heads")] = WINDOW,
) -> None:
    """Write one HTML page (opens from disk, no network) of head maps, ablations, needle runs and reader answers."""
    from headwise.reports import report

    path = report(runs, out, title, context, sink, window)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in a browser")
