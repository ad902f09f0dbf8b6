"""Head scores, each a class in its own file, registered here by name: retrieval (copy-paste attention on
needle tests, Wu et al. 2024), context (output change under sink + window) and gates (DuoAttention-style
gates trained against the full cache). `profile` measures one and returns a HeadMap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwise.core.registry import lookup

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from headwise.core.headmap import HeadMap
    from headwise.core.needles import NeedleTest
    from headwise.scores.base import Score

SCORES = {
    "retrieval": "headwise.scores.retrieval:RetrievalScore",
    "context": "headwise.scores.context:ContextScore",
    "gates": "headwise.scores.gates:GateScore",
}


def make_score(kind: str, **options) -> Score:
    """The score registered as `kind`, built with its `options`."""
    return lookup(SCORES, kind, "score")(**options)


def profile(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    score: str | Score = "retrieval",
    progress: bool = True,
    **options,
) -> HeadMap:
    """Score every head of `model` on `tests`: by the score kind named (retrieval, context, gates) with its
    `options`, or by a Score object; returns the HeadMap, with how it was measured in its `method` and which
    layers the model runs with a sliding window (their KV heads are never a head-wise cache's to choose)."""
    from headwise.core.models import sliding_layers

    scorer = make_score(score, **options) if isinstance(score, str) else score
    headmap = scorer.measure(model, tokenizer, tests, progress=progress)
    if sliding := sliding_layers(model):
        headmap.method["sliding_layers"] = sorted(sliding)
    return headmap
