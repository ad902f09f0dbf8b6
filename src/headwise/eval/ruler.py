"""RULER (NVIDIA's long-context benchmark) answered with any of headwise's caches or through the reader,
scored by RULER's own metrics (string_match_all, string_match_part).

Each sample is prefilled once with a full cache; every cache compared is derived from that prefill (all of
them compress after a one-shot prefill), then decoded greedily until the model's end-of-turn token or
RULER's generation length for the task.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from headwise.core.policy import CachePolicy
from headwise.errors import HeadwiseError
from headwise.eval import ruler_data
from headwise.eval.ruler_data import Sample

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from headwise.apps.config import ReaderConfig
    from headwise.core.headmap import HeadMap

FORMAT = "headwise.ruler"
SEED = 42  # RULER's own default
DEVIATIONS = {
    "sentence_splitter": ruler_data.SPLITTER,
    "prompt": "the model's chat template around RULER's task text; RULER's answer prefix opens the assistant turn",
    "generation": "greedy, until the model's end-of-turn token or RULER's tokens_to_generate for the task",
}
READER_DEVIATIONS = {
    "sentence_splitter": ruler_data.SPLITTER,
    "prompt": "read(): RULER's question (the task text after the context) in the reader's own prompt, around "
    "the passages it kept, RULER's answer prefix opening the assistant turn; RULER's instruction before the "
    "context is not used",
    "generation": "greedy, until the model's end-of-turn token or RULER's tokens_to_generate for the task",
}
NO_TEMPLATE = {  # a base model (Gemma 3 270M's GGUF carries no chat template): what replaces the chat turns
    "prompt": "no chat template (a base model): the BOS token, RULER's task text, a line 'Answer:', then RULER's "
    "answer prefix",
    "generation": "greedy, until the model's EOS token or RULER's tokens_to_generate for the task",
}


def deviations(tokenizer: PreTrainedTokenizerBase, reader: bool) -> dict[str, str]:
    """Where a run departs from RULER's own harness, as its result file records it: the caches' or the
    reader's prompt, and for a tokenizer without a chat template the plain prompt that stands in for it."""
    found = dict(READER_DEVIATIONS if reader else DEVIATIONS)
    if not tokenizer.chat_template:
        if reader:
            found["prompt"] += "; no chat template (a base model): the reader's plain prompt, ending in 'Answer:'"
        else:
            found["prompt"] = NO_TEMPLATE["prompt"]
        found["generation"] = NO_TEMPLATE["generation"]
    return found


@dataclass
class RulerOutcome:
    """One sample answered by one method, scored 0-100 by RULER's metric for its task."""

    task: str
    length: int
    index: int
    method: str
    prediction: str
    outputs: list[str]
    score: float
    prompt_tokens: int
    new_tokens: int
    seconds: float  # this method's decoding (or the whole read); the shared prefill is in prefill_seconds
    prefill_seconds: float | None = None
    kv_bytes: int | None = None
    full_kv_bytes: int | None = None
    in_evidence: bool | None = None  # reader: were all answers in the passages given to the model?


@dataclass
class RulerResult:
    """Every outcome of a RULER run and the settings that reproduce it."""

    model: str
    outcomes: list[RulerOutcome]
    settings: dict = field(default_factory=dict)

    def methods(self) -> list[str]:
        """Methods in the order they ran."""
        return list(dict.fromkeys(o.method for o in self.outcomes))

    def scores(self) -> dict[tuple[str, int], dict[str, float]]:
        """(method, length) -> task -> mean score, plus "average": the mean over tasks (RULER's average)."""
        table: dict[tuple[str, int], dict[str, float]] = {}
        for method in self.methods():
            for length in sorted({o.length for o in self.outcomes}):
                row = {}
                for task in dict.fromkeys(o.task for o in self.outcomes):
                    got = [o.score for o in self.outcomes if (o.method, o.length, o.task) == (method, length, task)]
                    if got:
                        row[task] = float(np.mean(got))
                if row:
                    table[(method, length)] = {**row, "average": float(np.mean(list(row.values())))}
        return table

    def kv_ratio(self, method: str) -> float | None:
        """Mean share of the full cache's bytes `method` held at the end of its answers."""
        pairs = [(o.kv_bytes, o.full_kv_bytes) for o in self.outcomes if o.method == method and o.full_kv_bytes]
        return float(np.mean([a / b for a, b in pairs])) if pairs else None

    def markdown(self) -> str:
        """The per-task table: one row per (method, length), RULER's average first."""
        table = self.scores()
        tasks = list(dict.fromkeys(o.task for o in self.outcomes))
        lines = [
            "| method | length | KV held | average | " + " | ".join(tasks) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(tasks),
        ]
        for (method, length), row in table.items():
            ratio = self.kv_ratio(method)
            cells = " | ".join(f"{row[t]:.1f}" if t in row else "–" for t in tasks)
            held = f"{ratio:.0%}" if ratio is not None else "–"
            lines.append(f"| {method} | {length} | {held} | **{row['average']:.1f}** | {cells} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The saved form (format headwise.ruler): settings, the score table and every outcome."""
        return {
            "format": FORMAT,
            "version": 1,
            "model": self.model,
            "settings": self.settings,
            "scores": [{"method": m, "length": n, **row} for (m, n), row in self.scores().items()],
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def save(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Score per task (bars per method and length), RULER's average last."""
        from headwise.plots import ruler_bars

        rows = [{"label": f"{m} · {n}", **row} for (m, n), row in self.scores().items()]
        return ruler_bars(rows, title or f"{self.model} · RULER", path)


def score(task: str, prediction: str, outputs: list[str]) -> float:
    """RULER's score (0-100) of one prediction: its metric for the task's family after its own clean-up of
    the prediction (strip, control characters to newlines)."""
    from long_context_eval.eval.synthetic.constants import TASKS as METRICS

    family = ruler_data.task_config(task)["task"]
    cleaned = re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()
    return float(METRICS[family]["metric_fn_per_sample"]([cleaned], [outputs])[0])


def _question(sample: Sample, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """The reader's question and answer prefix: RULER's task text after the context, up to the end of the
    user turn, and what follows the template's opening of the model's turn."""
    from headwise.core.prompts import PLACEHOLDER, chat_parts

    after = chat_parts(tokenizer, PLACEHOLDER)[1]
    tail = sample.prompt[sample.context[1] :]
    if after not in tail:
        return tail.strip(), ""
    cut = tail.index(after)
    return tail[:cut].strip().removeprefix("Question:").strip(), tail[cut + len(after) :]


def _answer_with_caches(model, tokenizer, sample: Sample, methods) -> list[RulerOutcome]:
    """One prefill, then each (label, cache policy, head map) method's greedy answer from it."""
    import torch
    from transformers import DynamicCache

    from headwise.core.cache import kv_nbytes
    from headwise.core.caches import build_cache, from_prefill
    from headwise.core.generate import answer_text, decode, prefill
    from headwise.core.prompts import encode

    ids = torch.tensor(encode(tokenizer, sample.prompt))
    began = time.perf_counter()
    prefilled = DynamicCache(config=model.config)
    first = prefill(model, ids, prefilled)
    prefill_seconds = time.perf_counter() - began
    outcomes = []
    for label, policy, headmap in methods:
        began = time.perf_counter()
        cache = from_prefill(prefilled, build_cache(model, policy, len(ids), headmap))
        produced = decode(model, tokenizer, first, cache, sample.max_new_tokens)
        held, full = kv_nbytes(cache)
        text = answer_text(model, tokenizer, produced)
        outcomes.append(RulerOutcome(
            sample.task, sample.length, sample.index, label, text, sample.outputs,
            score(sample.task, text, sample.outputs), len(ids), len(produced), round(time.perf_counter() - began, 3),
            round(prefill_seconds, 3), held, full,
        ))  # fmt: skip
    return outcomes


def _answer_with_reader(model, tokenizer, sample: Sample, headmap, config) -> RulerOutcome:
    """The sample's context and question through `read()`, and whether its evidence held every answer."""
    from headwise.apps.reader import read

    config = replace(config, answer_tokens=sample.max_new_tokens)
    context = sample.prompt[sample.context[0] : sample.context[1]]
    question, opening = _question(sample, tokenizer)
    got = read(model, tokenizer, context, question, headmap, config, progress=False, answer_prefix=opening)
    evidence = " ".join(context[a:b] for a, b in got.evidence).lower()
    return RulerOutcome(
        sample.task, sample.length, sample.index, f"reader-{config.unit}", got.text, sample.outputs,
        score(sample.task, got.text, sample.outputs), got.input_tokens, 0, round(got.seconds, 3),
        in_evidence=all(o.lower() in evidence for o in sample.outputs),
    )  # fmt: skip


def _methods(caches: list[CachePolicy], headmap: HeadMap | None, rankings: dict[str, HeadMap] | None) -> list:
    """(label, policy, head map) per method: each headwise cache once per named ranking when there are any."""
    methods = []
    for policy in caches:
        if policy.kind == "headwise" and rankings:
            methods += [(policy.label.replace("headwise", f"headwise[{name}]"), policy, ranking)
                        for name, ranking in rankings.items()]  # fmt: skip
        else:
            methods.append((policy.label, policy, headmap))
    return methods


def run_ruler(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str] | str = "all",
    lengths: tuple[int, ...] = (4096,),
    samples: int = 25,
    caches: list[CachePolicy] | None = None,
    headmap: HeadMap | None = None,
    reader: ReaderConfig | None = None,
    seed: int = SEED,
    progress: bool = True,
    rankings: dict[str, HeadMap] | None = None,
) -> RulerResult:
    """RULER's `tasks` at each length, `samples` each (made by RULER's generators with `seed`, cached), answered
    with every cache in `caches` (default: the full cache; the headwise kind ranks by `headmap`, default the
    model's default ranking, `cache_headmap`) or, with `reader`, through `read()` at any length. `rankings`
    compares head maps instead: every headwise cache runs once per named map, labelled "headwise[name]-30%"."""
    from headwise.core.models import check_model_lengths, model_id, model_shape
    from headwise.core.shipped import cache_headmap

    tasks = ruler_data.check_tasks(tasks) if isinstance(tasks, str) else ruler_data.check_tasks(",".join(tasks))
    if samples < 1:
        raise HeadwiseError(f"need at least one sample per task, got {samples}")
    caches = caches or [CachePolicy()]
    if reader is None:
        check_model_lengths(model, list(lengths), reserve=0)
        if any(c.kind == "headwise" for c in caches):
            headmap = headmap or cache_headmap(model_id(model))
            for m in [headmap, *(rankings or {}).values()]:
                m.check_model(model)
    elif any(c.kind != "full" for c in caches):
        raise HeadwiseError("a reader keeps its own context; run it with the full cache")
    methods = _methods(caches, headmap, rankings)
    name = model_id(model).replace("/", "--")
    jobs = [(t, n) for n in lengths for t in tasks]
    outcomes: list[RulerOutcome] = []
    began = time.perf_counter()
    bar = tqdm(total=len(jobs) * samples, desc="ruler", unit="sample", disable=not progress)
    for task, length in jobs:
        bar.set_postfix_str(f"{task} @ {length}")
        for sample in ruler_data.generate(tokenizer, task, length, samples, seed, name):
            if reader is None:
                outcomes.extend(_answer_with_caches(model, tokenizer, sample, methods))
            else:
                outcomes.append(_answer_with_reader(model, tokenizer, sample, headmap, reader))
            bar.update()
    bar.close()
    settings = {
        "tasks": tasks,
        "lengths": list(lengths),
        "samples": samples,
        "seed": seed,
        "caches": [asdict(c) for c in caches] if reader is None else None,
        "reader": asdict(reader) if reader is not None else None,
        "cache_ranking": headmap.method if headmap is not None and reader is None and not rankings else None,
        "rankings": {name: m.method for name, m in rankings.items()} if rankings else None,
        "ruler": {"package": "nvidia-long-context-eval", "version": ruler_data.package_version()},
        "deviations": deviations(tokenizer, reader is not None),
        "dtype": str(model.dtype).removeprefix("torch."),
        "window": model_shape(model).max_positions,
        "seconds": round(time.perf_counter() - began, 1),
    }
    return RulerResult(model_id(model), outcomes, settings)
