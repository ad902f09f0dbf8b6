"""The retrieval score (Wu et al. 2024) and a sink score, read from decode steps: while the model answers a
needle test greedily, a head copies at a step when its most-attended position lies in the needle and holds
the token just generated; its score is the share of needle tokens it copied, over correctly answered tests."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from headwise.core.generate import greedy
from headwise.core.headmap import HeadMap
from headwise.core.hooks import AttentionCall, AttentionHook, attach
from headwise.core.models import ModelShape, model_id, model_shape
from headwise.core.needles import NeedleTest, is_correct
from headwise.core.policy import SINK
from headwise.errors import HeadwiseError
from headwise.scores.base import check_tests, measured_on

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class DecodeRecorder(AttentionHook):
    """At each decode step, per layer and head: the most-attended absolute position and the attention mass on
    the first `sink` positions. Both are overwritten by the next step; read them after each one."""

    def __init__(self, sink: int = SINK) -> None:
        self.sink = sink

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Allocate one slot per layer and head."""
        self.argmax = torch.full((shape.num_layers, shape.num_heads), -1, dtype=torch.long)
        self.sink_mass = torch.zeros(shape.num_layers, shape.num_heads)

    def weights(self, call: AttentionCall, weights: torch.Tensor) -> torch.Tensor:
        """Record batch row 0; positions are absolute (a sliding-window layer's keys are a recent suffix)."""
        offset = int(call.positions[-1]) + 1 - weights.shape[-1]
        self.argmax[call.layer] = weights[0].argmax(-1).cpu() + offset
        self.sink_mass[call.layer] = weights[0, :, : max(self.sink - offset, 0)].sum(-1).cpu()
        return weights


@dataclass
class TestScore:
    """One needle test read out: the answer, whether it counts, copies per head / needle length, sink mass."""

    answer: str
    correct: bool
    retrieval: np.ndarray
    sink: np.ndarray


def score_test(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, test: NeedleTest) -> TestScore:
    """Answer `test` greedily, counting per head the decode steps that copy a needle token."""
    shape = model_shape(model)
    copies = torch.zeros(shape.num_layers, shape.num_heads)
    sink = torch.zeros(shape.num_layers, shape.num_heads)
    start, end = test.span
    prompt = test.ids
    steps = 0
    recorder = DecodeRecorder()

    def on_step(token: int) -> None:
        nonlocal steps
        pos = recorder.argmax
        inside = (pos >= start) & (pos < end)
        copies.add_((inside & (prompt[pos.clamp(0, len(prompt) - 1)] == token)).float())
        sink.add_(recorder.sink_mass)
        steps += 1

    with attach(model, recorder):
        answer = greedy(model, tokenizer, prompt, on_step=on_step)
    return TestScore(
        answer, is_correct(test.needle, answer), (copies / (end - start)).numpy(), (sink / max(steps, 1)).numpy()
    )


@dataclass
class RetrievalScore:
    """Retrieval and sink scores per head. Only tests answered correctly count (as in the reference code),
    unless `count_all`."""

    count_all: bool = False
    kind: str = "retrieval"

    def measure(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
    ) -> HeadMap:
        """Score every head over `tests`; the map records how many tests counted and how long it took."""
        check_tests(model, tests)
        began = time.perf_counter()
        results = [
            score_test(model, tokenizer, t) for t in tqdm(tests, desc="profile", unit="test", disable=not progress)
        ]
        counted = [r for r in results if r.correct or self.count_all]
        if not counted:
            raise HeadwiseError(
                f"the model answered none of the {len(tests)} needle tests correctly, so no head can be scored; "
                "use shorter --lengths (the default model is reliable up to about 1-2K tokens)"
            )
        return HeadMap(
            model=model_id(model),
            scores=np.mean([r.retrieval for r in counted], axis=0),
            num_kv_heads=model_shape(model).num_kv_heads,
            sink=np.mean([r.sink for r in results], axis=0),
            method={
                "score": "retrieval (Wu et al. 2024): share of needle tokens copied by argmax attention at "
                "decode steps",
                "sink_score": f"mean decode-step attention mass on the first {SINK} tokens",
                "counted_rule": "all tests" if self.count_all else "answer ROUGE-1 recall of the gold answer > 0.5",
                "tests": len(tests),
                "tests_counted": len(counted),
                **measured_on(model, tests),
                "seconds": round(time.perf_counter() - began, 1),
            },
        )
