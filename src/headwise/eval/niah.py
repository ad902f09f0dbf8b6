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

from headwise.apps.config import ReaderConfig
from headwise.apps.reader import read
from headwise.apps.spans import head_weights
from headwise.core.cache import kv_nbytes
from headwise.core.caches import build_cache
from headwise.core.generate import greedy
from headwise.core.headmap import HeadMap
from headwise.core.models import check_model_lengths, model_id
from headwise.core.needles import NeedleTest, is_correct
from headwise.core.policy import CachePolicy
from headwise.core.shipped import cache_headmap
from headwise.errors import HeadwiseError
from headwise.eval.tasks import context_text

FORMAT = "headwise.niah"


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
    needle: str = ""  # the sentence hidden in the prompt


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

    def to_dict(self) -> dict:
        """The saved form (format headwise.niah): settings, overall accuracy, the grid and every outcome."""
        lengths, depths, acc = self.grid()
        return {
            "format": FORMAT,
            "version": 1,
            "model": self.model,
            "accuracy": self.accuracy,
            "correct": sum(o.correct for o in self.outcomes),
            "tests": len(self.outcomes),
            "kv_ratio": self.kv_ratio,
            "settings": self.settings,
            "grid": {"lengths": lengths, "depths": depths, "accuracy": acc.tolist()},
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def save(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @property
    def title(self) -> str:
        """What the run measured, for plot titles: model, cache or reader, and the score."""
        method = self.settings.get("method", "full")
        correct = sum(o.correct for o in self.outcomes)
        return f"{self.model} · {method}\n{self.accuracy:.0%} found ({correct}/{len(self.outcomes)} tests)"

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """The classic needle heatmap: depth (rows) vs context length (columns), green = found."""
        from headwise.plots import niah_heatmap

        lengths, depths, acc = self.grid()
        return niah_heatmap(lengths, depths, acc, title or self.title, path)


Answerer = Callable[[NeedleTest], Outcome]


def cache_answerer(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, make_cache: Callable[[NeedleTest], Cache] | None = None
) -> Answerer:
    """Answer each test greedily with the cache `make_cache` builds for it (a plain cache by default) and
    record the KV bytes it held at the end."""

    def answer(test: NeedleTest) -> Outcome:
        cache = make_cache(test) if make_cache else DynamicCache(config=model.config)
        began = time.perf_counter()
        response = greedy(model, tokenizer, test.ids, cache=cache)
        held, full = kv_nbytes(cache)
        return Outcome(
            test.length, test.depth, test.needle.question, test.needle.answer, response,
            is_correct(test.needle, response), held, full, round(time.perf_counter() - began, 2),
            needle=test.needle.needle,
        )  # fmt: skip

    return answer


def policy_caches(
    model: PreTrainedModel, policy: CachePolicy, headmap: HeadMap | None = None
) -> Callable[[NeedleTest], Cache]:
    """Per-test caches of `policy`'s kind, each sized to its prompt."""
    return lambda test: build_cache(model, policy, len(test.ids), headmap)


def reader_answerer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    headmap: HeadMap | np.ndarray | None,
    config: ReaderConfig | None = None,
) -> Answerer:
    """Read each test's context (decoded to text) with `read()`, and score the answer and whether the
    passages given to the model held the needle."""
    weights = head_weights(model, headmap, (config or ReaderConfig()).top)

    def answer(test: NeedleTest) -> Outcome:
        text = context_text(tokenizer, test)
        got = read(model, tokenizer, text, test.needle.question, weights, config, progress=False)
        kept = all(_holds(text, fact, got.evidence) for fact in test.facts or (test.needle.needle,))
        return Outcome(
            test.length, test.depth, test.needle.question, test.needle.answer, got.text,
            is_correct(test.needle, got.text), seconds=round(got.seconds, 2), kept_needle=kept,
            needle=" ".join(test.facts) or test.needle.needle,
        )  # fmt: skip

    return answer


def _holds(text: str, fact: str, spans: list[tuple[int, int]]) -> bool:
    """Whether one of the character spans holds the whole of `fact` as it appears in `text`."""
    start = text.find(fact)
    return start >= 0 and any(a <= start and start + len(fact) <= b for a, b in spans)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    answer: Answerer | None = None,
    progress: bool = True,
    desc: str = "niah",
) -> list[Outcome]:
    """Each test's outcome from `answer` (default: greedy decoding with the full cache, after checking the
    lengths fit the model's window)."""
    if answer is None:
        check_model_lengths(model, [t.length for t in tests])
        answer = cache_answerer(model, tokenizer)
    return [answer(t) for t in tqdm(tests, desc=desc, unit="test", disable=not progress, leave=False)]


def run_niah(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    cache: CachePolicy | None = None,
    headmap: HeadMap | np.ndarray | None = None,
    reader: ReaderConfig | None = None,
    progress: bool = True,
) -> NiahResult:
    """Run needle tests with a KV cache (`cache`, ranked by `headmap` for the headwise kind; default: the
    full cache) or through the reader (`reader`, reading with `headmap`'s top heads), keeping every outcome."""
    began = time.perf_counter()
    if reader is not None:
        if cache is not None and cache.kind != "full":
            raise HeadwiseError("a reader keeps its own context; run it with the full cache")
        answer, method = reader_answerer(model, tokenizer, headmap, reader), f"reader-{reader.unit}"
        described: dict = {"cache": "full", "reader": asdict(reader)}
    else:
        cache = cache or CachePolicy()
        check_model_lengths(model, [t.length for t in tests])
        if isinstance(headmap, np.ndarray):
            raise HeadwiseError("a cache ranks KV heads by a HeadMap, not by a weight array")
        if cache.kind == "headwise":
            headmap = headmap or cache_headmap(model_id(model))
            headmap.check_model(model)
        answer, method = cache_answerer(model, tokenizer, policy_caches(model, cache, headmap)), cache.label
        described = {"cache": asdict(cache), "reader": None}
        if cache.kind == "headwise":
            described["cache_ranking"] = {
                "kind": headmap.kind,
                "score": headmap.method.get("score", ""),
                "tie_break": headmap.method.get("tie_break"),
            }
    outcomes = evaluate(model, tokenizer, tests, answer, progress, desc=method)
    settings = {
        "method": method,
        **described,
        "haystacks": sorted({t.haystack for t in tests}),
        "needles": len({t.needle for t in tests}),
        "dtype": str(model.dtype).removeprefix("torch."),
        "seconds": round(time.perf_counter() - began, 1),
    }
    return NiahResult(model_id(model), outcomes, settings)
