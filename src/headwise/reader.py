"""Reading beyond the window: answer a question over text of any length, guided by retrieval heads.

As in InfiniRetri (Ye et al. 2025), the text is read in chunks that fit the model's window. Each
chunk is prompted after the units (sentences, blocks or tokens) kept so far and before the question.
The attention that the question's tokens pay each unit's tokens in the head map's retrieval heads
(summed over the unit by default; `pool="mean"` for several facts) scores it. The best units
within a fixed token budget are kept, in their original order, for the next chunk. At the end the
kept units are rescored together; neighbours in the input are merged into passages, passages
scoring under `focus` x the best one's are left out (a small model is easily misled by weak
distractors; `focus=0` keeps every fact of a question that needs several), and the rest are put on
separate lines in rising order of score, so the strongest evidence stands next to the question.
Every step is one forward pass of at most `head + keep + chunk + question` tokens, stopped after the
last layer that holds a chosen head, so time grows linearly with the input and the model's working
memory is bounded by that one pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.errors import HeadwiseError
from headwise.generate import greedy
from headwise.haystack import tokenize_sentences
from headwise.headmap import HeadMap
from headwise.models import model_shape
from headwise.niah import Outcome
from headwise.probe import ProbeDone, span_probing
from headwise.rank import head_weights
from headwise.tasks import NeedleTest, context_text, is_correct, prompt_parts

UNITS = ("sentence", "block", "token")
MAX_UNIT_TOKENS = 48  # sentences longer than this are split, so one unit never crowds out the budget
BLOCK_TOKENS = 16
DEFAULT_CHUNK = 1024
DEFAULT_KEEP = 256
POOLS = ("sum", "max", "mean")
DEFAULT_POOL = "sum"  # "mean" keeps several facts more often, but also short fragments that can mislead an answer
SEPARATOR = "\n"
DEFAULT_FOCUS = 0.5  # tuned on development needles only (bench/reader_answer.py)
ORDERS = ("score", "input")


@dataclass
class Answer:
    """The model's answer, the character spans of the input it was given to answer from, and the cost."""

    text: str
    evidence: list[tuple[int, int]]
    input_tokens: int
    chunks: int
    seconds: float

    def quotes(self, source: str) -> list[str]:
        """The evidence spans as text, cut from the input `source`."""
        return [source[a:b] for a, b in self.evidence]


def read(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    question: str,
    headmap: HeadMap | None = None,
    top: int | float | str = "5%",
    chunk: int = DEFAULT_CHUNK,
    keep: int = DEFAULT_KEEP,
    unit: str = "sentence",
    pool: str = DEFAULT_POOL,
    focus: float = DEFAULT_FOCUS,
    progress: bool = True,
) -> Answer:
    """Answer `question` over `text` of any length, reading `chunk` new tokens per step and carrying the
    `keep` tokens that the map's `top` heads (every head without a map) attend to most. The answer comes
    from the kept passages scoring at least `focus` x the best one's."""
    weights = head_weights(model, headmap, top)
    return read_with_weights(model, tokenizer, text, question, weights, chunk, keep, unit, pool, focus, progress)


def read_with_weights(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    question: str,
    weights: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    keep: int = DEFAULT_KEEP,
    unit: str = "sentence",
    pool: str = DEFAULT_POOL,
    focus: float = DEFAULT_FOCUS,
    progress: bool = True,
) -> Answer:
    """`read` with the heads given as (layers, heads) weights: any choice of heads, e.g. the last layer.
    A unit scores the `pool` (sum, max or mean) of its tokens' attention."""
    began = time.perf_counter()
    if not 0.0 <= focus <= 1.0:
        raise HeadwiseError(f"focus must be between 0 (answer from every kept passage) and 1, got {focus}")
    selection = select(model, tokenizer, text, question, weights, chunk, keep, unit, pool, progress)
    prompt, used = answer_prompt(selection, tokenizer, focus=focus)
    response = greedy(model, tokenizer, prompt)
    spans = evidence(selection.chars[used])
    return Answer(response, spans, selection.input_tokens, selection.chunks, time.perf_counter() - began)


@dataclass
class Selection:
    """What the reader kept of a text: the kept units' token ids in the input's order, where each begins in
    the input, their final scores, and the prompt around them."""

    head: list[int]
    tail: list[int]
    units: list[np.ndarray]
    starts: np.ndarray
    scores: np.ndarray
    chars: np.ndarray  # (units, 2): each kept unit's [start, end) character span in the input
    input_tokens: int
    chunks: int


def select(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    question: str,
    weights: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    keep: int = DEFAULT_KEEP,
    unit: str = "sentence",
    pool: str = DEFAULT_POOL,
    progress: bool = True,
) -> Selection:
    """Read `text` chunk by chunk and keep the `keep` tokens' worth of units that `weights`' heads rank
    best for `question`; the kept units are scored once more, together, for the answer prompt."""
    if not text.strip():
        raise HeadwiseError("the text to read is empty")
    if not question.strip():
        raise HeadwiseError("the question is empty; ask something the text answers")
    if unit not in UNITS:
        raise HeadwiseError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if pool not in POOLS:
        raise HeadwiseError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    head, tail = prompt_parts(tokenizer, question)
    window = model_shape(model).max_positions
    if keep < MAX_UNIT_TOKENS or chunk < MAX_UNIT_TOKENS:
        raise HeadwiseError(f"chunk and keep must each be at least {MAX_UNIT_TOKENS} tokens")
    if len(head) + keep + chunk + len(tail) > window:
        raise HeadwiseError(
            f"chunk {chunk} + keep {keep} + {len(head) + len(tail)} prompt tokens exceed the model's window of "
            f"{window}; use a chunk of at most {window - keep - len(head) - len(tail)}"
        )
    ids, offsets, starts = tokenize_sentences(tokenizer, text)
    units = make_units(len(ids), starts, unit)
    chunks = split_chunks(units, chunk)
    last = int(np.flatnonzero(weights.any(axis=1)).max())

    def tokens(members: np.ndarray) -> np.ndarray:
        """The token ids of the units `members`, in the order given."""
        return np.concatenate([ids[a:b] for a, b in units[members]])

    def score(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, length) of each unit in `members`, prompted together in one pass."""
        lengths = units[members, 1] - units[members, 0]
        return pooled(token_scores(model, tokens(members), head, tail, weights, last), lengths, pool), lengths

    kept = np.zeros(0, dtype=np.int64)
    for members in tqdm(chunks, desc="read", unit="chunk", disable=not progress, leave=False):
        present = np.concatenate([kept, members])
        scores, lengths = score(present)
        kept = np.sort(present[choose(scores, lengths, keep)])
    final = score(kept)[0]
    parts = [ids[x:y] for x, y in units[kept]]
    chars = np.stack([offsets[units[kept, 0], 0], offsets[units[kept, 1] - 1, 1]], axis=1)
    return Selection(head, tail, parts, units[kept, 0], final, chars, len(ids), len(chunks))


def answer_prompt(
    selection: Selection,
    tokenizer: PreTrainedTokenizerBase,
    separator: str = SEPARATOR,
    order: str = "score",
    merge: bool = True,
    focus: float = DEFAULT_FOCUS,
) -> tuple[torch.Tensor, np.ndarray]:
    """The prompt to answer from and which kept units it holds (in the input's order). Kept units adjacent in the
    input are merged into passages (`merge`), which stand apart with `separator` between them, in rising
    order of their best unit's score (`order="score"`: the strongest evidence next to the question, where
    a small model reads best) or in the input's order (`order="input"`). Passages whose best unit scores
    below `focus` x the best unit's score are left out: a small model is misled by weak distractors."""
    if order not in ORDERS:
        raise HeadwiseError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    ends = [int(a) + len(u) for a, u in zip(selection.starts, selection.units, strict=True)]
    groups: list[list[int]] = []
    for i, start in enumerate(selection.starts.tolist()):
        if merge and groups and ends[groups[-1][-1]] == start:
            groups[-1].append(i)
        else:
            groups.append([i])
    strength = [float(selection.scores[g].max()) for g in groups]
    best = max(strength, default=0.0)
    ranked = [(s, g) for s, g in zip(strength, groups, strict=True) if s >= focus * best]
    if order == "score":
        ranked.sort(key=lambda pair: pair[0])
    groups = [g for _, g in ranked]
    gap = np.asarray(tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else [], dtype=np.int64)
    pieces: list[np.ndarray] = []
    for n, group in enumerate(groups):
        pieces += ([gap] if n else []) + [selection.units[i] for i in group]
    body = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    prompt = torch.tensor(np.concatenate([selection.head, body, selection.tail]), dtype=torch.long)
    used = np.sort(np.asarray([i for g in groups for i in g], dtype=np.int64))
    return prompt, used


def load_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; refuse missing, binary, undecodable or empty files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HeadwiseError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in data[:65536]:
        raise HeadwiseError(f"{path} looks like a binary file; give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeadwiseError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it first") from None
    if not text.strip():
        raise HeadwiseError(f"{path} is empty")
    return text


def make_units(n: int, starts: np.ndarray, unit: str) -> np.ndarray:
    """(units, 2) token [start, end) spans covering 0..n: sentences (long ones split), fixed blocks or tokens."""
    if unit == "token":
        edges = np.arange(n + 1)
    elif unit == "block":
        edges = np.append(np.arange(0, n, BLOCK_TOKENS), n)
    else:
        bounds = np.unique(np.concatenate([[0], starts[starts < n], [n]]))
        pieces = [np.arange(a, b, MAX_UNIT_TOKENS) for a, b in pairwise(bounds)]
        edges = np.append(np.concatenate(pieces), n)
    return np.stack([edges[:-1], edges[1:]], axis=1)


def split_chunks(units: np.ndarray, chunk: int) -> list[np.ndarray]:
    """Consecutive runs of unit indices holding at most `chunk` tokens each (units are at most `chunk` long)."""
    cuts, begin = [], units[0, 0]
    for i, (start, end) in enumerate(units.tolist()):
        if end - begin > chunk:
            cuts.append(i)
            begin = start
    return np.split(np.arange(len(units)), cuts)


@torch.inference_mode()
def token_scores(
    model: PreTrainedModel,
    context: np.ndarray,
    head: list[int],
    tail: list[int],
    weights: np.ndarray,
    last_layer: int,
) -> np.ndarray:
    """Attention that the question's tokens (the prompt after the context) pay each context token,
    averaged over question tokens and weighted over heads; one forward pass, stopped after `last_layer`."""
    prompt = np.concatenate([head, context, tail])
    spans = [(len(head) + i, len(head) + i + 1) for i in range(len(context))]
    rows = (len(prompt) - len(tail), len(prompt))
    with span_probing(model, rows, spans, last_layer) as probe:
        try:
            model(torch.tensor(prompt[None], device=model.device), use_cache=False, logits_to_keep=1)
        except ProbeDone:
            pass
    return np.einsum("lh,lht->t", weights, probe.mass.numpy())


def pooled(per_token: np.ndarray, lengths: np.ndarray, pool: str) -> np.ndarray:
    """One score per unit from its tokens' scores (units are consecutive runs of `lengths` tokens)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if pool == "max":
        return np.maximum.reduceat(per_token, starts)
    total = np.add.reduceat(per_token, starts)
    return total / lengths if pool == "mean" else total


def choose(scores: np.ndarray, lengths: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the best-scoring units whose lengths fit in `budget` tokens (greedy, best first)."""
    picked, used = [], 0
    for i in np.argsort(-scores, kind="stable"):
        if used + lengths[i] <= budget:
            picked.append(i)
            used += lengths[i]
    return np.asarray(picked, dtype=np.int64)


def evidence(chars: np.ndarray) -> list[tuple[int, int]]:
    """Character spans of units (in the input's order), neighbours merged."""
    spans: list[tuple[int, int]] = []
    for start, end in chars.tolist():
        if spans and start <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def needle_reader(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, weights: np.ndarray, **options
) -> Callable[[NeedleTest], Outcome]:
    """A `respond` function for run_niah: read a needle test's context (decoded to text) with the heads
    `weights` and `options` of `read`, and score the answer and whether the kept text held the needle."""

    def respond(test: NeedleTest) -> Outcome:
        text = context_text(tokenizer, test)
        answer = read_with_weights(model, tokenizer, text, test.needle.question, weights, progress=False, **options)
        kept = all(_holds(text, fact, answer.evidence) for fact in test.facts or (test.needle.needle,))
        return Outcome(
            test.length,
            test.depth,
            test.needle.question,
            test.needle.answer,
            answer.text,
            is_correct(test.needle, answer.text),
            seconds=round(answer.seconds, 2),
            kept_needle=kept,
        )

    return respond


def _holds(text: str, fact: str, spans: list[tuple[int, int]]) -> bool:
    """Whether one of the character spans holds the whole of `fact` as it appears in `text`."""
    start = text.find(fact)
    return start >= 0 and any(a <= start and start + len(fact) <= b for a, b in spans)
