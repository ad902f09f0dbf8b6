"""Needle-in-a-haystack evaluation: answer every test, score it, and draw the depth x length grid."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

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


@dataclass
class NiahResult:
    """All outcomes of a run plus what produced them."""

    model: str
    outcomes: list[Outcome]
    settings: dict = field(default_factory=dict)

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
) -> list[Outcome]:
    """Answer each test greedily and score it (ROUGE-1 recall of the answer > 0.5)."""
    check_lengths(model, [t.length for t in tests])
    outcomes = []
    for t in tqdm(tests, desc=desc, unit="test", disable=not progress, leave=False):
        response = greedy(model, tokenizer, t.ids)
        outcomes.append(
            Outcome(t.length, t.depth, t.needle.question, t.needle.answer, response, is_correct(t.needle, response))
        )
    return outcomes


def run_niah(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
) -> NiahResult:
    """Run a needle grid with the plain model and keep every outcome."""
    began = time.perf_counter()
    outcomes = evaluate(model, tokenizer, tests, progress)
    settings = {
        "haystacks": sorted({t.haystack for t in tests}),
        "needles": len({t.needle for t in tests}),
        "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - began, 1),
    }
    return NiahResult(model_id(model), outcomes, settings)
