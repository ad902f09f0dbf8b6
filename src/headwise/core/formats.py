"""Foreign head map formats, as text in and arrays out: Retrieval_Head's `{"layer-head": [scores]}` JSON
(per query head) and DuoAttention's layers x KV-heads TSV of gate values. Neither records a model name
or KV grouping, so reading one needs the model's shape; headmap.py turns the arrays into a HeadMap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from headwise.core.models import ModelShape
from headwise.errors import HeadwiseError


def is_retrieval_head(doc: object) -> bool:
    """Whether a JSON document looks like Retrieval_Head's map: only "layer-head" keys."""
    return isinstance(doc, dict) and "format" not in doc and bool(doc) and all("-" in str(k) for k in doc)


def retrieval_head_json(scores: np.ndarray) -> str:
    """(layers, heads) scores as Retrieval_Head JSON, one single-score list per head."""
    layers, heads = scores.shape
    return json.dumps({f"{l}-{h}": [float(scores[l, h])] for l in range(layers) for h in range(heads)})


def parse_retrieval_head(doc: dict, shape: ModelShape, path: Path) -> np.ndarray:
    """(layers, heads) scores from Retrieval_Head JSON: a head's score is the mean of its list."""
    scores = np.zeros((shape.num_layers, shape.num_heads))
    for key, values in doc.items():
        try:
            layer, head = (int(x) for x in key.split("-"))
            scores[layer, head] = float(np.mean(values)) if len(values) else 0.0
        except (ValueError, TypeError, IndexError):
            raise HeadwiseError(
                f"{path}: entry {key!r} does not fit a {shape.num_layers} x {shape.num_heads} model "
                "(keys are 'layer-head', values lists of scores)"
            ) from None
    return scores


def duo_tsv(kv_scores: np.ndarray) -> str:
    """(layers, KV heads) values as DuoAttention's tab-separated table."""
    return "\n".join("\t".join(f"{v:.6f}" for v in row) for row in kv_scores) + "\n"


def parse_duo_tsv(text: str, shape: ModelShape, path: Path) -> np.ndarray:
    """(layers, KV heads) gate values from DuoAttention's TSV, checked against the model's shape."""
    try:
        kv = np.asarray([[float(v) for v in line.split()] for line in text.strip().splitlines()])
    except ValueError as exc:
        raise HeadwiseError(f"{path} is not a table of numbers: {exc}") from None
    if kv.shape != (shape.num_layers, shape.num_kv_heads):
        raise HeadwiseError(
            f"{path} has shape {kv.shape}; the model needs {shape.num_layers} layers x {shape.num_kv_heads} KV heads"
        )
    return kv
