"""Turn each result into what its part of the page draws: heatmap cells with their scores, the KV heads a
head-wise cache keeps at each budget, ablation bars, the needle grid with its outcomes, and a reader's input
cut into kept passages, context around them and collapsed stretches between. All geometry and colour are
decided here, so the template only lays them out and the script only reacts to the mouse."""

from __future__ import annotations

from headwise.core.headmap import HeadMap
from headwise.core.policy import SINK, WINDOW, split_budget
from headwise.errors import HeadwiseError

BUDGETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # the cache control's steps: 5% .. 100%
CONTEXT_CHARS = 300  # characters shown on each side of a kept passage; the rest is collapsed until clicked


def colour(cmap: str, value: float) -> str:
    """A matplotlib colour map's colour for `value` in [0, 1], as #rrggbb."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps[cmap](min(max(value, 0.0), 1.0)))


def ink(fill: str) -> str:
    """Black or white, whichever reads better on the background colour `fill` (#rrggbb)."""
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#111111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


def headmap_view(hm: HeadMap, context_length: int = 8192, sink: int = SINK, window: int = WINDOW) -> dict:
    """Cells of the layers x heads heatmap (layer 0 at the bottom) and, per budget, the KV heads a head-wise
    cache ranked by this map keeps in full at `context_length` tokens and the window the others keep."""
    size = max(8, min(24, 720 // hm.num_heads))
    high = float(hm.scores.max()) or 1.0
    low = min(0.0, float(hm.scores.min()))
    cells = [
        {
            "x": h * size, "y": (hm.num_layers - 1 - l) * size, "layer": l, "head": h, "kv": h // hm.kv_group,
            "score": round(float(hm.scores[l, h]), 4),
            "sink": None if hm.sink is None else round(float(hm.sink[l, h]), 4),
            "fill": colour("viridis", (hm.scores[l, h] - low) / (high - low)),
        }
        for l in range(hm.num_layers)
        for h in range(hm.num_heads)
    ]  # fmt: skip
    sliding = [int(l) for l in hm.method.get("sliding_layers", [])]
    total = (hm.num_layers - len(sliding)) * hm.num_kv_heads
    plans = []
    for budget in BUDGETS:
        try:
            n_full, kept_window = split_budget(budget, total, sink, window, context_length)
        except HeadwiseError as exc:
            plans.append({"budget": budget, "error": str(exc)})
            continue
        full = hm.best_kv_heads(n_full, sliding)
        kept = [[l, k] for l, heads in enumerate(full) for k in heads]
        plans.append({"budget": budget, "full": kept, "window": kept_window, "count": n_full, "total": total})
    return {
        "cells": cells, "size": size, "width": hm.num_heads * size, "height": hm.num_layers * size,
        "layers": hm.num_layers, "heads": hm.num_heads, "kv_heads": hm.num_kv_heads, "kv_group": hm.kv_group,
        "model": hm.model, "kind": hm.kind, "summary": hm.summary(), "low": low, "high": high,
        "top": [{"layer": l, "head": h, "score": float(hm.scores[l, h])} for l, h in hm.top(min(10, hm.scores.size))],
        "plans": plans, "total": total, "sliding": sliding, "context_length": context_length, "sink": sink,
        "default_plan": BUDGETS.index(0.3), "method": {k: v for k, v in hm.method.items() if k != "sliding_layers"},
    }  # fmt: skip


def ablation_view(doc: dict) -> dict:
    """The top-k vs random table and, per mask mode, bars (no masking, top heads, random mean) with one dot
    per random draw, in a 100-unit-high chart."""
    groups = []
    for i, r in enumerate(doc["results"]):
        random = [a for a in r.get("random", []) if a is not None]
        mean = sum(random) / len(random) if random else None
        bars = [
            {"label": "no masking", "value": r.get("baseline"), "class": "baseline"},
            {"label": "top heads masked", "value": r.get("top"), "class": "top"},
            {"label": "random heads masked", "value": mean, "class": "random"},
        ]
        for j, bar in enumerate(bars):
            bar["x"] = i * 140 + 20 + j * 36
            bar["height"] = 0 if bar["value"] is None else round(100 * bar["value"], 1)
        dots = [{"x": i * 140 + 20 + 2 * 36 + 14, "y": round(100 - 100 * a, 1), "value": a} for a in random]
        groups.append({"mode": r["mode"], "x": i * 140 + 20, "bars": bars, "dots": dots, "row": r, "mean": mean})
    first = doc["results"][0]
    return {
        "model": doc.get("model", ""), "headmap": doc.get("headmap", ""), "tests": doc.get("tests"),
        "count": first.get("count"), "groups": groups, "width": 140 * len(groups) + 20,
        "top_heads": [f"L{l}H{h}" for l, h in first.get("top_heads", [])],
        "random_heads": [[f"L{l}H{h}" for l, h in draw] for draw in first.get("random_heads", [])],
    }  # fmt: skip


def niah_view(doc: dict) -> dict:
    """The depth x length grid (accuracy and colour per cell) and the outcomes each cell holds."""
    grid = doc["grid"]
    lengths, depths, accuracy = grid["lengths"], grid["depths"], grid["accuracy"]
    index = {(n, d): (i, j) for i, d in enumerate(depths) for j, n in enumerate(lengths)}
    outcomes: dict[str, list[dict]] = {}
    for o in doc["outcomes"]:
        i, j = index[(o["length"], o["depth"])]
        outcomes.setdefault(f"{i}-{j}", []).append(o)
    rows = []
    for i, d in enumerate(depths):
        cells = []
        for j, _ in enumerate(lengths):
            a = accuracy[i][j]
            a = None if a is None or a != a else a  # NaN: no test in the cell
            fill = "#eeeeee" if a is None else colour("RdYlGn", a)
            cells.append({"key": f"{i}-{j}", "accuracy": a, "fill": fill, "ink": ink(fill)})
        rows.append({"depth": d, "cells": cells})
    settings = doc.get("settings", {})
    return {
        "model": doc.get("model", ""), "method": settings.get("method", "full"), "accuracy": doc.get("accuracy"),
        "correct": doc.get("correct"), "tests": doc.get("tests"), "kv_ratio": doc.get("kv_ratio"),
        "lengths": lengths, "rows": rows, "outcomes": outcomes, "settings": settings,
    }  # fmt: skip


def ruler_view(doc: dict) -> dict:
    """Tasks (columns, RULER's average first) x methods at each length (rows), a colour per score, and each
    row's outcomes for a look at what the model answered."""
    tasks = list(dict.fromkeys(o["task"] for o in doc["outcomes"]))
    rows = []
    for r in doc["scores"]:
        cells = []
        for task in ["average", *tasks]:
            value = r.get(task)
            fill = "#eeeeee" if value is None else colour("RdYlGn", value / 100)
            cells.append({"value": value, "fill": fill, "ink": ink(fill), "task": task})
        chosen = [o for o in doc["outcomes"] if (o["method"], o["length"]) == (r["method"], r["length"])]
        held = [o["kv_bytes"] / o["full_kv_bytes"] for o in chosen if o.get("full_kv_bytes")]
        rows.append({
            "method": r["method"], "length": r["length"], "cells": cells, "outcomes": chosen,
            "kv": sum(held) / len(held) if held else None,
        })  # fmt: skip
    return {"model": doc.get("model", ""), "tasks": tasks, "rows": rows, "settings": doc.get("settings", {})}


def _snap(text: str, at: int, forward: bool) -> int:
    """`at` moved to the nearest whitespace in its direction (within 40 characters), so cuts fall between words."""
    if at >= len(text):
        return len(text)
    step = 1 if forward else -1
    for i in range(at, max(0, min(len(text), at + step * 40)), step):
        if text[i].isspace():
            return i
    return at


def reader_view(doc: dict, context: int = CONTEXT_CHARS) -> dict:
    """The input as segments in order: kept passages (score, rank, whether the answer saw them), `context`
    characters around each, and collapsed gaps the page fills in from the source when clicked."""
    source = doc["source"]
    passages = sorted(
        ({**p, "rank": r} for r, p in enumerate(doc["passages"], 1)), key=lambda p: (p["start"], p["end"])
    )
    segments: list[dict] = []
    gaps: list[str] = []  # the collapsed text, sent as data rather than as page elements
    at = 0
    for p in passages:
        start = max(p["start"], at)
        if start >= p["end"]:
            continue  # already shown inside the passage before it
        lead = _snap(source, max(at, start - context), forward=True) if start - context > at else at
        if lead > at:
            segments.append({"kind": "gap", "index": len(gaps), "chars": lead - at})
            gaps.append(source[at:lead])
        if start > lead:
            segments.append({"kind": "text", "text": source[lead:start]})
        segments.append({
            "kind": "passage", "text": source[start : p["end"]], "score": p["score"], "given": p["given"],
            "rank": p["rank"], "start": p["start"], "alpha": round(0.15 + 0.6 * p["score"], 3),
        })  # fmt: skip
        at = p["end"]
        tail = min(len(source), _snap(source, at + context, forward=False))
        nxt = next((q["start"] for q in passages if q["start"] >= at), len(source))
        tail = min(tail, nxt)
        if tail > at:
            segments.append({"kind": "text", "text": source[at:tail]})
            at = tail
    if at < len(source):
        segments.append({"kind": "gap", "index": len(gaps), "chars": len(source) - at})
        gaps.append(source[at:])
    return {
        "question": doc.get("question", ""), "answer": doc.get("answer", ""), "model": doc.get("model", ""),
        "passages": doc["passages"], "segments": segments, "gaps": gaps, "chars": len(source),
        "input_tokens": doc.get("input_tokens"), "chunks": doc.get("chunks"), "seconds": doc.get("seconds"),
        "settings": doc.get("settings", {}),
    }  # fmt: skip
