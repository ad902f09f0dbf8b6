"""What a report can show, read from disk: head maps, ablation results, needle and RULER runs, reader answers,
recognised by their "format" field (or, for files written before it existed, by their keys). Run folders
are searched for the result file they hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from headwise.core.headmap import FORMAT as HEADMAP_FORMAT
from headwise.core.headmap import HeadMap
from headwise.errors import HeadwiseError

FORMATS = {
    HEADMAP_FORMAT: "headmap",
    "headwise.ablation": "ablation",
    "headwise.niah": "niah",
    "headwise.answer": "answer",
    "headwise.ruler": "ruler",
}
IN_FOLDERS = ("results.json", "ablation.json", "answer.json")  # what a run folder's result is called
EXPECTED = (
    "a head map (headwise profile), ablation.json (headwise ablate), results.json (headwise niah or ruler) "
    "or a reader answer (headwise read --out)"
)


@dataclass
class Source:
    """One thing to show: its kind, the document (a HeadMap for head maps, else the JSON dict) and the file it
    came from ("" for results in memory)."""

    kind: str
    doc: HeadMap | dict
    name: str


def kind_of(doc: object) -> str | None:
    """Which kind of headwise result a JSON document is, or None."""
    if not isinstance(doc, dict):
        return None
    if doc.get("format") in FORMATS:
        return FORMATS[doc["format"]]
    if "outcomes" in doc and "grid" in doc:
        return "niah"
    results = doc.get("results")
    if isinstance(results, list) and results and all(isinstance(r, dict) and "top_heads" in r for r in results):
        return "ablation"
    if "answer" in doc and "passages" in doc and "source" in doc:
        return "answer"
    return None


def from_dict(doc: dict, name: str, shown: str | None = None) -> Source:
    """A source from a document; `name` names it in errors and, unless `shown` is given, in the page."""
    kind = kind_of(doc)
    if kind is None:
        raise HeadwiseError(f"{name} is not a headwise result; expected {EXPECTED}")
    return Source(kind, HeadMap.from_dict(doc, name) if kind == "headmap" else doc, name if shown is None else shown)


def load(path: str | Path) -> Source:
    """Read one result file, or the result file in a run folder, and say which kind it is."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in IN_FOLDERS if (path / f).is_file()]
        if not found:
            raise HeadwiseError(f"{path} holds no {', '.join(IN_FOLDERS)}; give a result file or a run folder")
        path = found[0]
    try:
        doc = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise HeadwiseError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HeadwiseError(
            f"{path} is not a headwise result (not readable JSON: {exc}); expected {EXPECTED}"
        ) from None
    return from_dict(doc, str(path))
