"""The context score: how much each head's output changes when it may see only the first `sink` and last
`window` tokens. A head with a large change needs its distant context; one with none can live in a sink +
window cache. Every test counts, right or wrong: the change does not depend on the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from headwise.core import attention
from headwise.core.generate import greedy
from headwise.core.headmap import HeadMap
from headwise.core.hooks import AttentionCall, AttentionHook, attach
from headwise.core.models import ModelShape, model_id, model_shape
from headwise.core.policy import SINK, WINDOW
from headwise.scores.base import check_tests, measured_on

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from headwise.core.needles import NeedleTest


class WindowProbe(AttentionHook):
    """Per head, ||o_full - o_window|| / ||o_full|| on the last `rows` query rows of each call (the question and
    answer tokens, the ones a compressed cache serves), float32, batch row 0, summed with the rows counted.
    The model's own sliding-window layers are skipped: they are windowed already."""

    def __init__(self, sink: int, window: int, rows: int = 32) -> None:
        self.sink, self.window, self.rows = sink, window, rows

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Allocate the sums."""
        self.total = torch.zeros(shape.num_layers, shape.num_heads)
        self.count = torch.zeros(shape.num_layers, 1)

    def observe(self, call: AttentionCall) -> None:
        """Add this call's change per head for its last rows."""
        if call.sliding:
            return
        m = min(self.rows, call.query.shape[2])
        full, win = attention.full_and_window(
            call.query[:1, :, -m:], call.key[:1], call.value[:1], call.positions[-m:], call.scaling, call.softcap,
            self.sink, self.window,
        )  # fmt: skip
        change = (full - win).norm(dim=-1) / full.norm(dim=-1).clamp_min(1e-6)  # (1, kv, group, m)
        self.total[call.layer] += change.sum(-1).reshape(-1).cpu()
        self.count[call.layer] += m


@dataclass
class ContextScore:
    """Context score per head, measured on the question and answer tokens of greedy answers."""

    sink: int = SINK
    window: int = WINDOW
    rows: int = 32
    kind: str = "context"

    def measure(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
    ) -> HeadMap:
        """Mean relative output change per head over `tests`."""
        check_tests(model, tests)
        began = time.perf_counter()
        probe = WindowProbe(self.sink, self.window, self.rows)
        with attach(model, probe):
            for test in tqdm(tests, desc="context profile", unit="test", disable=not progress):
                greedy(model, tokenizer, test.ids)
        return HeadMap(
            model=model_id(model),
            scores=(probe.total / probe.count.clamp_min(1)).numpy(),
            num_kv_heads=model_shape(model).num_kv_heads,
            kind="context",
            method={
                "score": f"context: mean ||o_full - o_window|| / ||o_full|| of a head's output on the last "
                f"{self.rows} prompt tokens and every answer token, window = first {self.sink} + last "
                f"{self.window} tokens",
                "sink": self.sink,
                "window": self.window,
                "tests": len(tests),
                **measured_on(model, tests),
                "seconds": round(time.perf_counter() - began, 1),
            },
        )
