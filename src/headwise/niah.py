"""Needle-in-a-haystack evaluation: answer every test, score it, and draw the depth x length grid."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import Cache, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from headwise.cache import kv_nbytes
from headwise.generate import greedy
from headwise.models import check_lengths, model_id
from headwise.tasks import NeedleTest, is_correct


@dataclass
class Outcome:
    """One test's result."""

    length: int
    depth: float
    question: str
    answer: str
    response: str
    correct: bool
    kv_bytes: int | None = None
    full_kv_bytes: int | None = None
    seconds: float | None = None
    kept_needle: bool | None = None  # a reader: did the text it answered from hold the whole needle?


@dataclass
class NiahResult:
    """All outcomes of a run plus what produced them."""

    model: str
    outcomes: list[Outcome]
    settings: dict = field(default_factory=dict)

    @property
    def kv_ratio(self) -> float | None:
        """Mean share of the full cache's bytes that the cache held at the end of each test."""
        pairs = [(o.kv_bytes, o.full_kv_bytes) for o in self.outcomes if o.kv_bytes is not None and o.full_kv_bytes]
        return float(np.mean([a / b for a, b in pairs])) if pairs else None

    @property
    def accuracy(self) -> float:
        """Share of tests answered correctly."""
        return float(np.mean([o.correct for o in self.outcomes])) if self.outcomes else 0.0

    def grid(self) -> tuple[list[int], list[float], np.ndarray]:
        """(lengths, depths, accuracy[depth, length]) for the heatmap."""
        lengths = sorted({o.length for o in self.outcomes})
        depths = sorted({o.depth for o in self.outcomes})
        acc = np.zeros((len(depths), len(lengths)))
        for i, d in enumerate(depths):
            for j, n in enumerate(lengths):
                cell = [o.correct for o in self.outcomes if o.depth == d and o.length == n]
                acc[i, j] = np.mean(cell) if cell else np.nan
        return lengths, depths, acc

    def save(self, path: str | Path) -> Path:
        """Results JSON: settings, overall accuracy, the grid and every outcome."""
        lengths, depths, acc = self.grid()
        doc = {
            "model": self.model,
            "accuracy": self.accuracy,
            "correct": sum(o.correct for o in self.outcomes),
            "tests": len(self.outcomes),
            "kv_ratio": self.kv_ratio,
            "settings": self.settings,
            "grid": {"lengths": lengths, "depths": depths, "accuracy": acc.tolist()},
            "outcomes": [asdict(o) for o in self.outcomes],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        return path

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """The classic needle heatmap: depth (rows) vs context length (columns), green = found."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lengths, depths, acc = self.grid()
        fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.5 * len(depths) + 2.5))
        im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        for i in range(len(depths)):
            for j in range(len(lengths)):
                ax.text(j, i, f"{acc[i, j]:.0%}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(title or f"needle in a haystack: {self.model} — {self.accuracy:.0%} overall")
        fig.colorbar(im, ax=ax, label="accuracy")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    progress: bool = True,
    desc: str = "niah",
    make_cache: Callable[[NeedleTest], Cache] | None = None,
    respond: Callable[[NeedleTest], Outcome] | None = None,
) -> list[Outcome]:
    """Answer each test greedily and score it (ROUGE-1 recall of the answer > 0.5). With `make_cache`,
    each test decodes with the cache it builds, and the KV bytes held at the end are recorded. With
    `respond` (a long-context reader, reader.py), that function answers and scores each test instead."""
    if respond is not None:
        return [respond(t) for t in tqdm(tests, desc=desc, unit="test", disable=not progress)]
    check_lengths(model, [t.length for t in tests])
    outcomes = []
    for t in tqdm(tests, desc=desc, unit="test", disable=not progress, leave=False):
        cache = make_cache(t) if make_cache else DynamicCache(config=model.config)
        response = greedy(model, tokenizer, t.ids, cache=cache)
        held, full = kv_nbytes(cache)
        outcomes.append(
            Outcome(
                t.length,
                t.depth,
                t.needle.question,
                t.needle.answer,
                response,
                is_correct(t.needle, response),
                held,
                full,
            )
        )
    return outcomes


def run_niah(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    progress: bool = True,
    make_cache: Callable[[NeedleTest], Cache] | None = None,
    cache_name: str = "full",
    respond: Callable[[NeedleTest], Outcome] | None = None,
    reader: dict | None = None,
) -> NiahResult:
    """Run a needle grid (with the full KV cache, the caches `make_cache` builds, or a reader's `respond`,
    described by its settings `reader`) and keep every outcome."""
    began = time.perf_counter()
    outcomes = evaluate(model, tokenizer, tests, progress, make_cache=make_cache, respond=respond)
    settings = {
        "cache": cache_name,
        "reader": reader,
        "haystacks": sorted({t.haystack for t in tests}),
        "needles": len({t.needle for t in tests}),
        "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - began, 1),
    }
    return NiahResult(model_id(model), outcomes, settings)
