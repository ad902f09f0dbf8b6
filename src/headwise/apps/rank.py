"""Attention-based re-ranking (in-context re-ranking, ICR; Chen et al. 2024), read from chosen heads.

All candidate documents go into one prompt, followed by the query. One pass measures the attention
that the query's tokens pay each document; a second pass with the content-free query "N/A" measures
the bias every document gets from its position alone, and is subtracted. The two passes share the
documents' prefill (one KV cache, cropped back between them), so the documents are encoded once.
Two passes per query whatever the number of documents: documents are cut to share the model's
window, and only when that would leave too little of each are they split into groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicSlidingWindowLayer

from headwise.apps.spans import SpanProbe, head_weights
from headwise.core.headmap import HeadMap, Top
from headwise.core.hooks import attach
from headwise.core.models import ModelShape, model_shape
from headwise.core.prompts import PLACEHOLDER, chat_parts, encode
from headwise.errors import HeadwiseError

CALIBRATION_QUERY = "N/A"
INTRO = "Here are some paragraphs:\n\n"
OUTRO = "Please find information that is relevant to the following query in the paragraphs above.\n\nQuery: "
MIN_DOC_TOKENS = 64
PROMPT_RESERVE = 64  # instruction, query and template tokens beyond the documents


@dataclass(frozen=True)
class Reading:
    """How a document's score is read from the two passes: the attention of the query's tokens (`rows="query"`)
    or of the query and the end of its chat turn (`"turn"`), calibrated token by token, summed over the
    document's tokens; with `drop_outliers`, each head skips the document's tokens below mean - 2 std (QRHead,
    Zhang et al. 2025) first."""

    rows: str = "query"
    drop_outliers: bool = False

    def __post_init__(self) -> None:
        if self.rows not in ("query", "turn") or not isinstance(self.drop_outliers, bool):
            raise HeadwiseError(
                f'a reading has rows "query" or "turn" and a true/false drop_outliers, got {self.rows!r}, '
                f"{self.drop_outliers!r}"
            )

    @classmethod
    def of(cls, headmap: HeadMap | np.ndarray | None) -> Reading:
        """The reading a head map was tuned with (its method's "reading"), else the default."""
        tuned = headmap.method.get("reading") if isinstance(headmap, HeadMap) else None
        if not tuned:
            return DEFAULT_READING
        try:
            return cls(**tuned)
        except (TypeError, HeadwiseError) as exc:
            raise HeadwiseError(
                f'this head map\'s method "reading" is malformed ({exc}); expected {{"rows": "query" or "turn", '
                '"drop_outliers": true or false}: re-profile it with headwise profile --score relevance'
            ) from None


READINGS = tuple(Reading(rows, drop) for rows in ("query", "turn") for drop in (False, True))
DEFAULT_READING = READINGS[0]


@dataclass(frozen=True)
class Doc:
    """A candidate document."""

    id: str
    text: str


def load_docs(path: str | Path) -> list[Doc]:
    """Read JSONL lines of {"id" (or "_id"), "text", optional "title"}; refuse malformed or empty input."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HeadwiseError(f"cannot read documents from {path}: {exc}") from None
    docs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HeadwiseError(f"{path}:{number} is not valid JSON ({exc.msg}); one object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise HeadwiseError(f'{path}:{number} needs an object with a "text" string')
        title = row.get("title") if isinstance(row.get("title"), str) else ""
        text = f"{title.strip()}. {row['text'].strip()}" if title.strip() else row["text"].strip()
        if not text:
            raise HeadwiseError(f"{path}:{number} has empty text")
        docs.append(Doc(str(row.get("id", row.get("_id", number))), text))
    if not docs:
        raise HeadwiseError(f"{path} holds no documents; write one JSON object per line")
    return docs


def rank(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    docs: list[Doc],
    headmap: HeadMap | np.ndarray | None = None,
    top: Top | None = None,
    max_doc_tokens: int = 300,
    fuse: Sequence[float] | None = None,
    weight: float | None = None,
    reading: Reading | None = None,
) -> list[tuple[str, float]]:
    """(doc id, score) pairs, best first: the calibrated attention the query's tokens pay each document
    in the map's `top` heads (default: the count the map was tuned with, else 5%; a (layers, heads) weight
    array chooses any heads; all heads without a map). Documents are cut to at most `max_doc_tokens`
    tokens. With `fuse` (a first-stage score per document, e.g. BM25), the result is their fusion at
    `weight` (default: the weight the head map was tuned with). `reading` defaults to the map's own."""
    if top is None:
        top = headmap.method.get("top", "5%") if isinstance(headmap, HeadMap) else "5%"
    weights = head_weights(model, headmap, top)
    if fuse is not None:
        if len(fuse) != len(docs):
            raise HeadwiseError(f"fuse has {len(fuse)} scores for {len(docs)} documents; give one per document")
        weight = fusion_weight(headmap) if weight is None else weight
    mass, _, _ = attention_scores(model, tokenizer, query, docs, max_doc_tokens, reading or Reading.of(headmap))
    scores = np.einsum("lh,lhd->d", weights, mass)
    if fuse is not None:
        scores = fused(scores, np.asarray(fuse, dtype=np.float64), weight)
    return sorted(zip((d.id for d in docs), scores.tolist(), strict=True), key=lambda p: -p[1])


def standardised(x: np.ndarray) -> np.ndarray:
    """Scores shifted to mean 0 and scaled to unit spread within the list (all 0 when they are all equal)."""
    spread = x.std()
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)


def fused(attention: np.ndarray, first_stage: np.ndarray, weight: float) -> np.ndarray:
    """A convex combination of the standardised attention and first-stage scores of one list (Bruch et al.
    2022: it beats reciprocal-rank fusion and its one weight is tuned from a few labelled queries)."""
    if not 0.0 <= weight <= 1.0:
        raise HeadwiseError(f"a fusion weight is in [0, 1] (1: attention only), got {weight}")
    return weight * standardised(attention) + (1 - weight) * standardised(first_stage)


def fusion_weight(headmap: HeadMap | np.ndarray | None) -> float:
    """The fusion weight a head map was tuned with (its method's "fusion"), or a clear error."""
    tuned = headmap.method.get("fusion") if isinstance(headmap, HeadMap) else None
    if not tuned:
        raise HeadwiseError(
            "this head map records no fusion weight; give weight= (0..1, 1: attention only) or use a map "
            "tuned for fusion (headwise profile --score relevance)"
        )
    return float(tuned["weight"])


def attention_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    docs: list[Doc],
    max_doc_tokens: int = 300,
    reading: Reading = DEFAULT_READING,
) -> tuple[np.ndarray, int, int]:
    """(calibrated attention mass per layer, head and document, read as `reading` says; forward passes used;
    tokens per document). Any choice of heads is a weighting of this table, so one pair of passes serves them
    all."""
    tables, passes, cap = attention_tables(model, tokenizer, query, docs, max_doc_tokens)
    return tables[reading], passes, cap


def attention_tables(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    docs: list[Doc],
    max_doc_tokens: int = 300,
) -> tuple[dict[Reading, np.ndarray], int, int]:
    """`attention_scores` for every reading in READINGS at once, from the same pair of passes."""
    if not query.strip():
        raise HeadwiseError("the query is empty")
    if not docs:
        raise HeadwiseError("there are no documents to rank")
    room = model_shape(model).max_positions - PROMPT_RESERVE - len(encode(tokenizer, query))
    groups, cap = _pack(len(docs), room, max_doc_tokens)
    doc_ids = [encode(tokenizer, " " + d.text)[:cap] for d in docs]
    shape = model_shape(model)
    tables = {r: np.zeros((shape.num_layers, shape.num_heads, len(docs))) for r in READINGS}
    for group in groups:
        for r, mass in _calibrated(model, tokenizer, query, [doc_ids[i] for i in group]).items():
            tables[r][:, :, group] = mass
    return tables, 2 * len(groups), cap


def _pack(n: int, room: int, max_doc_tokens: int) -> tuple[list[list[int]], int]:
    """Split n documents into as few equal groups as keep each document at least MIN_DOC_TOKENS long."""
    if room < MIN_DOC_TOKENS:
        raise HeadwiseError("the query alone nearly fills the model's window; shorten it")
    per_group = max(1, room // MIN_DOC_TOKENS)
    count = -(-n // per_group)
    size = -(-n // count)
    groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    return groups, min(max_doc_tokens, room // size)


@torch.inference_mode()
def _calibrated(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, query: str, docs: list[list[int]]
) -> dict[Reading, np.ndarray]:
    """Per reading, (layers, heads, docs): the attention the asking rows pay each document's tokens minus the
    same for the calibration query, token by token, summed over the document. Both passes share one prefill
    of the documents: each continues the same KV cache, cropped back between them, so only the query and the
    end of its turn are recomputed."""
    before, after = chat_parts(tokenizer, PLACEHOLDER)
    ids = encode(tokenizer, before + INTRO)
    spans = []
    for i, doc in enumerate(docs, 1):
        ids += encode(tokenizer, f"[{i}]")
        spans.append((len(ids), len(ids) + len(doc)))
        ids += doc + encode(tokenizer, "\n\n")
    ids += encode(tokenizer, OUTRO)
    prefix = len(ids)
    turn_end = encode(tokenizer, after)
    cache = DynamicCache(config=model.config)
    model(torch.tensor([ids], device=model.device), cache=cache, use_cache=True, logits_to_keep=1)
    for layer in cache.layers:  # a model's own sliding-window layers (Gemma 3) crop back only when recording
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.activate_past_recording()
    shape = model_shape(model)
    passes = []
    for text in (query, CALIBRATION_QUERY):
        asked = encode(tokenizer, text)
        probes = {
            "query": SpanProbe((prefix, prefix + len(asked)), spans, keep=True),
            "turn": SpanProbe((prefix, prefix + len(asked) + len(turn_end)), spans, keep=True),
        }
        with attach(model, *probes.values()):
            model(torch.tensor([asked + turn_end], device=model.device), cache=cache, logits_to_keep=1)
        cache.crop(-len(asked) - len(turn_end))
        passes.append({rows: _stacked(p.weights, shape, prefix) for rows, p in probes.items()})
    return {r: span_sums(passes[0][r.rows] - passes[1][r.rows], spans, r.drop_outliers) for r in READINGS}


def span_sums(weights: np.ndarray, spans: list[tuple[int, int]], drop_outliers: bool) -> np.ndarray:
    """(..., spans): per-key `weights` (..., keys) summed over each span; with `drop_outliers`, each row skips
    the span's keys below its mean - 2 std there first."""
    out = np.zeros((*weights.shape[:-1], len(spans)))
    for d, (a, b) in enumerate(spans):
        x = weights[..., a:b]
        if drop_outliers:
            x = x * (x >= x.mean(-1, keepdims=True) - 2 * x.std(-1, keepdims=True))
        out[..., d] = x.sum(-1)
    return out


def _stacked(weights: dict[int, torch.Tensor], shape: ModelShape, keys: int) -> np.ndarray:
    """(layers, heads, keys) of a probe's kept per-key weights; layers it did not read (sliding) are 0."""
    out = np.zeros((shape.num_layers, shape.num_heads, keys), dtype=np.float32)
    for layer, w in weights.items():
        out[layer] = w[:, :keys].numpy()
    return out
