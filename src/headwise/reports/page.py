"""Render the report page: each result becomes a section drawn by the Jinja2 template, with the page's CSS
and script inlined so that the file opens from disk anywhere. All user text is escaped by the template."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from headwise.core.headmap import HeadMap
from headwise.core.policy import SINK, WINDOW
from headwise.errors import HeadwiseError
from headwise.reports import sources, views
from headwise.version import __version__

Item = str | Path | HeadMap | dict | list  # a result file or run folder, a head map, a result or its to_dict()
DRAWN_BY = {
    "ablation": views.ablation_view, "niah": views.niah_view, "answer": views.reader_view, "ruler": views.ruler_view
}  # fmt: skip
LABELS = {
    "headmap": "Head map", "ablation": "Ablation", "niah": "Needle test", "answer": "Reader answer", "ruler": "RULER"
}  # fmt: skip


def _source(item: Item | object, position: int) -> sources.Source:
    """Any accepted item as a Source; objects with `to_dict()` (NiahResult, Answer) are taken by their dict,
    a list of them (what `ablate` returns) as one result."""
    if isinstance(item, (str, Path)):
        return sources.load(item)
    if isinstance(item, HeadMap):
        return sources.Source("headmap", item, "")
    if isinstance(item, (list, tuple)) and item and all(hasattr(x, "to_dict") for x in item):
        doc = {"results": [x.to_dict() for x in item]}
    else:
        doc = item.to_dict() if hasattr(item, "to_dict") else item
    if not isinstance(doc, dict):
        raise HeadwiseError(f"report item {position} is a {type(item).__name__}; give result files or results")
    return sources.from_dict(doc, f"item {position} ({type(item).__name__})", shown="")


def _view(source: sources.Source, context_length: int, sink: int, window: int) -> dict:
    """What the template needs to draw one source."""
    if source.kind == "headmap":
        return views.headmap_view(source.doc, context_length, sink, window)
    return DRAWN_BY[source.kind](source.doc)


def render(
    items: Iterable[Item], title: str | None = None, context_length: int = 8192, sink: int = SINK, window: int = WINDOW
) -> str:
    """The report's HTML. Head maps show which KV heads a head-wise cache keeps at `context_length` tokens,
    `sink` and at least `window` tokens for the others (the cache's defaults)."""
    import jinja2
    from markupsafe import Markup

    found = [_source(item, i) for i, item in enumerate(items, 1)]
    if not found:
        raise HeadwiseError("nothing to report; give at least one result file")
    sections = []
    for source in found:
        view = _view(source, context_length, sink, window)
        sections.append({"kind": source.kind, "name": source.name, "view": view, "label": _label(source, view)})
    files = resources.files("headwise.reports").joinpath("templates")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(files)), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template("report.html.j2").render(
        title=title or "headwise report: " + ", ".join(dict.fromkeys(s["view"]["model"] or "?" for s in sections)),
        version=__version__,
        made=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        sections=sections,
        css=Markup(files.joinpath("report.css").read_text("utf-8")),
        js=Markup(files.joinpath("report.js").read_text("utf-8")),
    )


def _label(source: sources.Source, view: dict) -> str:
    """A short name for the section heading and the page's navigation."""
    if source.kind == "headmap":
        return f"{LABELS['headmap']}: {view['model']} ({view['kind']})"
    if source.kind == "niah":
        return f"{LABELS['niah']}: {view['model']} · {view['method']}"
    return f"{LABELS[source.kind]}: {view['model']}"


def report(
    items: Iterable[Item],
    path: str | Path,
    title: str | None = None,
    context_length: int = 8192,
    sink: int = SINK,
    window: int = WINDOW,
) -> Path:
    """Write one self-contained HTML page showing every item: result files or run folders (head maps,
    ablation.json, niah results.json, saved reader answers), or results in memory (a HeadMap, what `ablate`,
    `run_niah` and `read` return, or their `to_dict()`)."""
    path = Path(path)
    html = render(items, title, context_length, sink, window)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, "utf-8")
    return path
