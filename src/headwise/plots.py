"""The figures headwise draws (matplotlib, written as PNG without a display): head map heatmaps, needle
grids and ablation bars. A leaf module: it takes arrays and labels, never models."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float, **subplots):
    """A figure and its axes (`subplots` as for plt.subplots) with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), layout="constrained", **subplots)


def _save(fig, path: str | Path) -> Path:
    """Write the figure as PNG and free it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def headmap_heatmap(
    scores: np.ndarray, labels: dict[tuple[int, int], str], title: str, cbar_label: str, path: str | Path
) -> Path:
    """Layers (rows, bottom up) x heads (columns), colour = score; `labels` are written in their cells."""
    layers, heads = scores.shape
    fig, ax = _figure(max(5, 0.45 * heads + 2.5), max(5, 0.25 * layers + 1.5))
    im = ax.imshow(scores, aspect="auto", cmap="viridis", origin="lower")
    for (layer, head), text in labels.items():
        ax.text(head, layer, text, ha="center", va="center", fontsize=7, color="white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label)
    return _save(fig, path)


def niah_heatmap(lengths: list[int], depths: list[float], accuracy: np.ndarray, title: str, path: str | Path) -> Path:
    """The needle grid: depth (rows) x context length (columns), accuracy per cell, green = found."""
    fig, ax = _figure(max(5.5, 1.2 * len(lengths) + 3), 0.5 * len(depths) + 2.8)
    im = ax.imshow(accuracy, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i in range(len(depths)):
        for j in range(len(lengths)):
            ax.text(j, i, "–" if np.isnan(accuracy[i, j]) else f"{accuracy[i, j]:.0%}", ha="center", va="center")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(fig, path)


def ablation_bars(rows: list[dict], title: str, path: str | Path) -> Path:
    """Accuracy per mask mode: baseline, top heads masked, and each random draw (dots) with their mean.
    `rows` hold "mode", "baseline", "top" and "random" (a list) as fractions."""
    fig, ax = _figure(2.2 * len(rows) + 2.5, 3.8)
    x = np.arange(len(rows))
    width = 0.27
    ax.bar(x - width, [r["baseline"] for r in rows], width, label="no masking", color="#9e9e9e")
    ax.bar(x, [r["top"] for r in rows], width, label="top heads masked", color="#d62728")
    ax.bar(x + width, [np.mean(r["random"]) for r in rows], width, label="random heads masked", color="#1f77b4")
    for i, r in enumerate(rows):
        ax.scatter(np.full(len(r["random"]), i + width), r["random"], color="black", s=12, zorder=3)
    ax.set_xticks(x, [r["mode"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("needle accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def rank_chart(rows: list[dict], latency: list[dict], title: str, path: str | Path) -> Path:
    """nDCG@10 per method (bars), and seconds per query against the number of documents (line)."""
    fig, (a, b) = _figure(10, 4, ncols=2, gridspec_kw={"width_ratios": [2, 1]})
    a.barh([r["method"] for r in rows][::-1], [r["ndcg@10"] for r in rows][::-1], color="#2a7")
    a.set_xlabel("nDCG@10")
    b.plot([r["docs"] for r in latency], [r["seconds"] for r in latency], "o-")
    b.set_xlabel("documents per query")
    b.set_ylabel("seconds per query")
    b.set_ylim(bottom=0)
    fig.suptitle(title)
    return _save(fig, path)


def ruler_bars(rows: list[dict], title: str, path: str | Path) -> Path:
    """RULER scores per task, one bar per row (a method at a length), RULER's average last. `rows` hold
    "label", "average" and a 0-100 score per task."""
    tasks = [k for k in rows[0] if k not in ("label", "average")] + ["average"]
    fig, ax = _figure(max(6.0, 0.55 * len(tasks) * max(1, len(rows)) ** 0.5 + 3), 4.2)
    x = np.arange(len(tasks))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [row.get(t, np.nan) for t in tasks], width, label=row["label"])
    ax.set_xticks(x, tasks, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("RULER score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)
