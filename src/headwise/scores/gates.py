"""The gate score, DuoAttention-style: one gate per KV head mixes full and sink + window attention, trained so
that the answers' next-token distributions stay those of the full cache (KL) while an L1 penalty pushes the
gates to 0. The gate a head keeps is what losing its distant context costs the answer, interactions between
heads included, which is what a head-wise cache must rank KV heads by.

Only the answer tokens are decoded with gates, after a full-attention prefill of the prompt, as a
HeadwiseCache serves them: each step is cheap and matches deployment."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from headwise.core import attention
from headwise.core.generate import MAX_NEW_TOKENS, stop_ids
from headwise.core.headmap import HeadMap
from headwise.core.hooks import AttentionCall, AttentionHook, attach
from headwise.core.models import model_id, model_shape, sliding_layers
from headwise.core.policy import SINK, WINDOW
from headwise.errors import HeadwiseError
from headwise.scores.base import check_tests, measured_on

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from headwise.core.needles import NeedleTest

GATE_STEPS = 480  # 10 passes over 48 prompts; the loss is flat after 3
GATE_L1 = 1.0  # of 0.2, 0.5, 1.0 the best at a 30% budget on dev needles


class WindowGates(torch.nn.Module, AttentionHook):
    """One gate `a` per KV head of the gated `layers`: the head's output is `a * full + (1 - a) * window`, where
    `window` attends only the first `sink` tokens and the `window` before the query, as a HeadwiseLayer serves a
    decode step. Used on query rows at the end of the keys, batch row 0, no padding."""

    def __init__(self, num_layers: int, num_kv_heads: int, sink: int, window: int, layers: list[int]) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.ones(num_layers, num_kv_heads))
        self.sink, self.window = sink, window
        self.hooked_layers = frozenset(layers)

    def attend(self, call: AttentionCall) -> torch.Tensor:
        """Gated output of the call's rows, (1, rows, heads, head_dim) in the query's dtype."""
        full, win = attention.full_and_window(
            call.query, call.key, call.value, call.positions, call.scaling, call.softcap, self.sink, self.window + 1
        )
        a = self.gate[call.layer].to(call.key.device)[None, :, None, None, None]
        return attention.ungroup(a * full + (1 - a) * win).to(call.query.dtype)


@dataclass
class _GateSample:
    """One training prompt: its full-attention KV cache, the full cache's greedy answer (the decode inputs) and
    the full model's log-probabilities after each answer token (the targets)."""

    cache: DynamicCache
    inputs: torch.Tensor
    target: torch.Tensor


def _replay(cache: DynamicCache) -> DynamicCache:
    """A cache that continues from `cache` and leaves it as it is: layers grow by concatenation (transformers'
    dynamic and sliding layers alike), so shallow copies of them share the prompt's tensors untouched."""
    replay = copy.copy(cache)
    replay.layers = [copy.copy(layer) for layer in cache.layers]
    return replay


@torch.no_grad()
def _gate_sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, test: NeedleTest) -> _GateSample | None:
    """Prefill the prompt with full attention, answer greedily, and keep what gate training replays. None when
    the answer is a single token: the prefill alone decides it, so no gate can change it. (Its own decode loop:
    the prompt's cache must stay as the prefill left it, and each step's log-probabilities are kept.)"""
    prompt_cache = DynamicCache(config=model.config)
    stops = stop_ids(model, tokenizer)
    out = model(test.ids[None].to(model.device), cache=prompt_cache, use_cache=True, logits_to_keep=1)
    cache = _replay(prompt_cache)
    tokens = [int(out.logits[0, -1].argmax())]
    logps = []
    while tokens[-1] not in stops and len(tokens) < MAX_NEW_TOKENS:
        out = model(torch.tensor([[tokens[-1]]], device=model.device), cache=cache, use_cache=True)
        logps.append(out.logits[0, -1].float().log_softmax(-1))
        tokens.append(int(out.logits[0, -1].argmax()))
    if not logps:
        return None
    return _GateSample(prompt_cache, torch.tensor(tokens[:-1], device=model.device), torch.stack(logps))


@dataclass
class GateData:
    """What gate training replays, prepared once so that several trainings (an L1 sweep) can share it."""

    tests: list[NeedleTest]
    samples: list[_GateSample]
    seconds: float


def gate_data(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
) -> GateData:
    """Prefill every test with full attention and record the full cache's answer."""
    check_tests(model, tests)
    began = time.perf_counter()
    samples = [_gate_sample(model, tokenizer, t) for t in tqdm(tests, desc="gates: prefill", disable=not progress)]
    samples = [s for s in samples if s is not None]
    if not samples:
        raise HeadwiseError("every answer was a single token, which no gate can change; use other needle tests")
    return GateData(tests, samples, time.perf_counter() - began)


def _train(
    model: PreTrainedModel, samples: list[_GateSample], gates: WindowGates, steps: int, l1: float, lr: float,
    progress: bool,
) -> list[float]:  # fmt: skip
    """Fit `gates` with Adam for `steps` steps of one sample each, every pass over the samples in a fresh
    shuffled order; gates are clamped to [0, 1] and the model's own weights stay frozen. Returns the mean loss
    of each pass (the last one may be partial)."""
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    order = torch.Generator().manual_seed(0)
    history, queue, total, done = [], [], 0.0, 0
    try:
        with attach(model, gates):
            for step in tqdm(range(steps), desc="gates: train", unit="step", disable=not progress):
                if not queue:
                    queue = torch.randperm(len(samples), generator=order).tolist()
                s = samples[queue.pop(0)]
                logits = model(s.inputs[None], cache=_replay(s.cache), use_cache=True).logits[0]
                kl = F.kl_div(logits.float().log_softmax(-1), s.target, log_target=True, reduction="none")
                loss = kl.sum(-1).mean() + l1 * gates.gate[sorted(gates.hooked_layers)].mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    gates.gate.clamp_(0.0, 1.0)
                total, done = total + loss.item(), done + 1
                if not queue or step == steps - 1:
                    history.append(round(total / done, 5))
                    total, done = 0.0, 0
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return history


@dataclass
class GateScore:
    """Gate score per KV head (shared by its query heads in the map); the model's own sliding-window layers
    score 0, since the model windows them itself."""

    sink: int = SINK
    window: int = WINDOW
    steps: int = GATE_STEPS
    l1: float = GATE_L1
    lr: float = 0.02
    kind: str = "gates"

    def measure(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
    ) -> HeadMap:
        """Prepare the tests' answers (gate_data), then train the gates on them (fit)."""
        return self.fit(model, gate_data(model, tokenizer, tests, progress), progress)

    def fit(self, model: PreTrainedModel, data: GateData, progress: bool = True) -> HeadMap:
        """Train the gates on prepared answers and return them as a HeadMap."""
        shape = model_shape(model)
        began = time.perf_counter()
        sliding = sliding_layers(model)
        gated = [i for i in range(shape.num_layers) if i not in sliding]
        gates = WindowGates(shape.num_layers, shape.num_kv_heads, self.sink, self.window, gated)
        history = _train(model, data.samples, gates, self.steps, self.l1, self.lr, progress)
        kv = gates.gate.detach().cpu().numpy().astype(np.float64)
        kv[list(sliding)] = 0.0
        return HeadMap(
            model=model_id(model),
            scores=np.repeat(kv, shape.group, axis=1),
            num_kv_heads=shape.num_kv_heads,
            kind="gates",
            method={
                "score": "gates (DuoAttention-style): per KV head, the trained weight of full over sink + window "
                f"attention at answer decoding; KL to the full cache's answer distributions + {self.l1} x mean gate",
                "sink": self.sink,
                "window": self.window,
                "steps": self.steps,
                "lr": self.lr,
                "l1": self.l1,
                "loss_per_pass": history,
                "tests": len(data.tests),
                "tests_used": len(data.samples),
                **measured_on(model, data.tests),
                "seconds": round(data.seconds + time.perf_counter() - began, 1),
            },
        )
