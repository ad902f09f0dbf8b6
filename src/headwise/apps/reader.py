"""Reading beyond the window: answer a question over text of any length, guided by retrieval heads.

As in InfiniRetri (Ye et al. 2025), the text is read in chunks that fit the model's window. Each chunk is
prompted after the units (sentences, blocks or tokens) kept so far and before the question; the attention
the question's tokens pay each unit in the head map's top heads scores it, and the best units within a
fixed token budget are kept for the next chunk. At the end a kept piece of a long sentence brings the
pieces beside it, the kept units are scored together, neighbours are merged into passages, passages under
`focus` x the best one's score are left out, and the rest are given to the model on separate lines in
rising order of score, the strongest next to the question. Every
step is one forward pass of at most prefix + keep + chunk + suffix tokens, stopped after the last layer
that holds a chosen head: time grows linearly with the input, memory is bounded by one pass. The answer's
numbers, codes and names are copied from the passages (`apps.copying`), so a small model cannot garble them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.apps.config import ORDERS, ReaderConfig
from headwise.apps.copying import CopyFromSource
from headwise.apps.spans import SpanProbe, head_weights
from headwise.apps.units import choose, make_units, pooled, split_chunks
from headwise.core.generate import argmax, greedy, stop_ids
from headwise.core.headmap import HeadMap
from headwise.core.hooks import StopForward, attach
from headwise.core.models import model_id, model_shape
from headwise.core.prompts import encode, reading_prompt
from headwise.core.text import body_span, tokenize_sentences, word_starts
from headwise.errors import HeadwiseError

SEPARATOR = "\n"


@dataclass(frozen=True)
class Passage:
    """A run of kept units: its [start, end) characters in the input, its score relative to the best kept
    passage (1.0 is the best), and whether it was given to the model to answer from."""

    start: int
    end: int
    score: float
    given: bool


FORMAT = "headwise.answer"


@dataclass
class Answer:
    """The model's answer, the passages the reader kept (best first), the cost, and what was asked of what
    (`question`, the input `source`, the model and reader settings), so that a saved answer can be shown in place."""

    text: str
    passages: list[Passage]
    input_tokens: int
    chunks: int
    seconds: float
    question: str = ""
    source: str = field(default="", repr=False)
    model: str = ""
    settings: dict = field(default_factory=dict)

    @property
    def evidence(self) -> list[tuple[int, int]]:
        """Character spans of the passages given to the model, in the input's order, neighbours merged."""
        spans: list[tuple[int, int]] = []
        for p in sorted((p for p in self.passages if p.given), key=lambda p: p.start):
            if spans and p.start <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(p.end, spans[-1][1]))
            else:
                spans.append((p.start, p.end))
        return spans

    def quotes(self, source: str, n: int | None = None, given_only: bool = True) -> list[str]:
        """The text of the best `n` passages (all without `n`), best first, cut from the input `source`;
        only those given to the model unless `given_only` is False."""
        chosen = [p for p in self.passages if p.given or not given_only][:n]
        return [source[p.start : p.end].strip() for p in chosen]

    def to_dict(self, with_source: bool = True) -> dict:
        """The saved form: answer, passages (best first, with their text), evidence, cost and settings, and
        the whole input unless `with_source` is False."""
        passages = [{**asdict(p), "text": self.source[p.start : p.end]} for p in self.passages]
        doc = {
            "format": FORMAT,
            "version": 1,
            "model": self.model,
            "question": self.question,
            "answer": self.text,
            "passages": passages,
            "evidence": self.evidence,
            "input_tokens": self.input_tokens,
            "chunks": self.chunks,
            "seconds": self.seconds,
            "settings": self.settings,
        }
        return {**doc, "source": self.source} if with_source else doc

    def save(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON, for `headwise report`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path


@dataclass
class Selection:
    """What the reader kept: each kept unit's token ids and first token in the input (in the input's
    order), its final score and [start, end) characters, and the prompt around the context."""

    prefix: list[int]
    suffix: list[int]
    units: list[np.ndarray]
    starts: np.ndarray
    scores: np.ndarray
    chars: np.ndarray  # (units, 2)
    input_tokens: int
    chunks: int


def read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    question: str,
    headmap: HeadMap | np.ndarray | None = None,
    config: ReaderConfig | None = None,
    progress: bool = True,
    answer_prefix: str = "",
) -> Answer:
    """Answer `question` over `text` of any length, reading through the head map's `config.top` heads (a
    (layers, heads) weight array chooses any heads; every head without a map). An `answer_prefix` opens the
    model's turn (as RULER does for chat models); the answer is what the model writes after it, its value words
    copied from what it was shown with `config.copy`."""
    began = time.perf_counter()
    config = config or ReaderConfig()
    weights = head_weights(model, headmap, config.top)
    selection = select(model, tokenizer, text, question, weights, config, progress)
    prompt, used = answer_prompt(selection, tokenizer, focus=config.focus)
    prompt = torch.cat([prompt, torch.tensor(encode(tokenizer, answer_prefix), dtype=torch.long)])
    pick = argmax
    if config.copy:
        seen = tokenizer.decode(prompt, skip_special_tokens=True)
        pick = CopyFromSource(tokenizer, seen, stop_ids(model, tokenizer))
    response = greedy(model, tokenizer, prompt, config.answer_tokens, pick=pick)
    return Answer(
        response, passages(selection, used), selection.input_tokens, selection.chunks, time.perf_counter() - began,
        question, text, model_id(model), asdict(config),
    )  # fmt: skip


def select(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    question: str,
    weights: np.ndarray,
    config: ReaderConfig | None = None,
    progress: bool = True,
) -> Selection:
    """Read `text` chunk by chunk and keep the `config.keep` tokens' worth of units that `weights`' heads rank
    best for `question`; the kept units are scored once more, together, for the answer prompt."""
    config = config or ReaderConfig()
    if not question.strip():
        raise HeadwiseError("the question is empty; ask something the text answers")
    begin, end = body_span(text) if config.skip_boilerplate else (0, len(text))
    body = text[begin:end]
    if not body.strip():
        raise HeadwiseError("the text to read is empty")
    if not weights.any():
        raise HeadwiseError("no head is chosen to read with; give a head map or nonzero head weights")
    prefix, suffix = reading_prompt(tokenizer, question)
    max_positions = model_shape(model).max_positions
    spare = max_positions - len(prefix) - len(suffix) - config.keep
    if config.chunk > spare:
        raise HeadwiseError(
            f"chunk {config.chunk} + keep {config.keep} + {len(prefix) + len(suffix)} prompt tokens exceed the "
            f"model's window of {max_positions}; use a chunk of at most {spare}"
        )
    ids, offsets, starts = tokenize_sentences(tokenizer, body)
    units = make_units(len(ids), starts, config.unit, word_starts(body, offsets))
    chunks = split_chunks(units, config.chunk)
    last = int(np.flatnonzero(weights.any(axis=1)).max())

    def score(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, length) of each unit in `members`, prompted together in one pass."""
        context = np.concatenate([ids[a:b] for a, b in units[members]])
        lengths = units[members, 1] - units[members, 0]
        per_token = token_scores(model, context, prefix, suffix, weights, last)
        return pooled(per_token, lengths, config.pool), lengths

    kept = np.zeros(0, dtype=np.int64)
    for members in tqdm(chunks, desc="read", unit="chunk", disable=not progress, leave=False):
        present = np.concatenate([kept, members])
        scores, lengths = score(present)
        kept = np.sort(present[choose(scores, lengths, config.keep)])
    if config.unit == "sentence":
        kept = with_sentence_neighbours(kept, units, starts)
    final = score(kept)[0]
    chars = np.stack([offsets[units[kept, 0], 0], offsets[units[kept, 1] - 1, 1]], axis=1) + begin
    parts = [ids[a:b] for a, b in units[kept]]
    return Selection(prefix, suffix, parts, units[kept, 0], final, chars, len(ids), len(chunks))


def with_sentence_neighbours(kept: np.ndarray, units: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """`kept` (sorted unit indices) plus the pieces just before and after each kept piece of a sentence that
    was split, so that a key the heads found comes with the value beside it (a uuid after "... is:")."""
    whole = np.isin(units[:, 0], starts) | (units[:, 0] == 0)  # unit i begins its sentence
    before = kept[~whole[kept]] - 1
    after = kept[kept + 1 < len(units)] + 1
    after = after[~whole[after]]
    return np.union1d(kept, np.concatenate([before, after]))


@torch.inference_mode()
def token_scores(
    model: PreTrainedModel,
    context: np.ndarray,
    prefix: list[int],
    suffix: list[int],
    weights: np.ndarray,
    last_layer: int,
) -> np.ndarray:
    """Attention the question's tokens (the suffix) pay each context token, averaged over the suffix's rows
    and weighted over heads; one forward pass, stopped after `last_layer`."""
    prompt = np.concatenate([prefix, context, suffix])
    spans = [(len(prefix) + i, len(prefix) + i + 1) for i in range(len(context))]
    probe = SpanProbe((len(prompt) - len(suffix), len(prompt)), spans, last_layer)
    with attach(model, probe):
        try:
            model(torch.tensor(prompt[None], device=model.device), use_cache=False, logits_to_keep=1)
        except StopForward:
            pass
    return np.einsum("lh,lht->t", weights, probe.mass.numpy())


def _groups(selection: Selection, merge: bool = True) -> list[list[int]]:
    """Kept units in runs that are adjacent in the input (each unit alone without `merge`)."""
    ends = [int(a) + len(u) for a, u in zip(selection.starts, selection.units, strict=True)]
    groups: list[list[int]] = []
    for i, start in enumerate(selection.starts.tolist()):
        if merge and groups and ends[groups[-1][-1]] == start:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def answer_prompt(
    selection: Selection,
    tokenizer: PreTrainedTokenizerBase,
    separator: str = SEPARATOR,
    order: str = "score",
    merge: bool = True,
    focus: float = ReaderConfig.focus,
) -> tuple[torch.Tensor, np.ndarray]:
    """The prompt to answer from and the kept units it holds (sorted). Passages (runs of adjacent kept units,
    with `merge`) whose best unit scores under `focus` x the best unit's are left out; the rest stand apart
    with `separator` between them, in rising order of score (`order="score"`: the strongest next to the
    question, where a small model reads best) or in the input's order (`order="input"`)."""
    if order not in ORDERS:
        raise HeadwiseError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    groups = _groups(selection, merge)
    strength = [float(selection.scores[g].max()) for g in groups]
    best = max(strength, default=0.0)
    ranked = [(s, g) for s, g in zip(strength, groups, strict=True) if s >= focus * best]
    if order == "score":
        ranked.sort(key=lambda pair: pair[0])
    gap = np.asarray(encode(tokenizer, separator) if separator else [], dtype=np.int64)
    pieces: list[np.ndarray] = []
    for n, (_, group) in enumerate(ranked):
        pieces += ([gap] if n else []) + [selection.units[i] for i in group]
    body = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    prompt = torch.tensor(np.concatenate([selection.prefix, body, selection.suffix]), dtype=torch.long)
    used = np.sort(np.asarray([i for _, g in ranked for i in g], dtype=np.int64))
    return prompt, used


def passages(selection: Selection, used: np.ndarray) -> list[Passage]:
    """The kept passages (runs of adjacent kept units), best first, marking those the answer prompt holds."""
    groups = _groups(selection)
    strength = np.asarray([selection.scores[g].max() for g in groups], dtype=np.float64)
    best = float(strength.max()) if len(strength) else 1.0
    given = set(used.tolist())
    found = [
        Passage(
            int(selection.chars[g[0], 0]),
            int(selection.chars[g[-1], 1]),
            float(s / best) if best > 0 else 0.0,
            any(i in given for i in g),
        )
        for g, s in zip(groups, strength, strict=True)
    ]
    return sorted(found, key=lambda p: -p.score)
