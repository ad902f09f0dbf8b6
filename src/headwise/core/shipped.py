"""The head maps headwise ships for its default models, and which one a head-wise cache ranks KV heads by
when none is given. How each was made is recorded in its `method` and in docs/experiments/kv-cache.md."""

from __future__ import annotations

import contextlib
import json
from importlib import resources

from headwise.core.headmap import HeadMap
from headwise.errors import HeadwiseError

KINDS = ("retrieval", "gates", "cache")


def shipped_headmap(name: str, kind: str = "retrieval") -> HeadMap:
    """A shipped head map of a default model: its retrieval map; `kind="gates"`, KV heads ranked by trained
    gates; or `kind="cache"`, the exact ranking head-wise caches use where it is more than the gates."""
    if kind not in KINDS:
        raise HeadwiseError(f"shipped head maps are of kind {', '.join(KINDS)}, not {kind!r}")
    doc = resources.files("headwise.data.headmaps").joinpath(
        f"{name}.json" if kind == "retrieval" else f"{name}-{kind}.json"
    )
    if not doc.is_file():
        make = {"retrieval": "", "gates": " --score gates"}.get(kind)
        hint = f"run: headwise profile --model {name}{make}" if make is not None else "give a head map with --headmap"
        raise HeadwiseError(f"headwise ships no {kind} head map for {name!r}; {hint}")
    return HeadMap.from_dict(json.loads(doc.read_text("utf-8")), f"shipped {kind} head map {name}")


def cache_headmap(name: str) -> HeadMap:
    """The map a head-wise cache ranks KV heads by when none is given: the shipped cache map where there is
    one; else the shipped gate map with the heads it leaves tied ordered by the retrieval map; else the
    shipped retrieval map."""
    with contextlib.suppress(HeadwiseError):
        return shipped_headmap(name, "cache")
    retrieval = shipped_headmap(name)
    with contextlib.suppress(HeadwiseError):
        return shipped_headmap(name, "gates").with_ties_broken_by(retrieval)
    return retrieval
