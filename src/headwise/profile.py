"""Score every head: the retrieval score of Wu et al. 2024 and a sink (streaming) score, from decode steps
only; and, for caches, what sink + window attention costs a head: its output change (context score) or a
gate trained DuoAttention-style against the full cache's answers (gate score)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from headwise.cache import WINDOW
from headwise.errors import HeadwiseError
from headwise.generate import MAX_NEW_TOKENS, greedy, stop_ids
from headwise.headmap import HeadMap
from headwise.models import check_lengths, model_id, model_shape, sliding_layers
from headwise.probe import WindowGates, gating, recording, window_probing
from headwise.tasks import NeedleTest, is_correct

DEFAULT_LENGTHS = [500, 1000, 1500]
DEFAULT_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
DEFAULT_NEEDLES = 4
GATE_STEPS = 480  # 10 passes over bench/kv_gates.py's 48 prompts; the loss is flat after 3
GATE_L1 = 1.0  # of 0.2, 0.5, 1.0 the best at a 30% budget on dev needles (bench/kv_gates.py)


@dataclass
class TestScore:
    """One needle test read out: the answer, whether it counts, copies per head / needle length, sink mass."""

    answer: str
    correct: bool
    retrieval: np.ndarray
    sink: np.ndarray


def score_test(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, test: NeedleTest) -> TestScore:
    """Generate the answer greedily; at each decode step a head copies when its most-attended position
    lies in the needle and holds the token just generated. Score = copies / needle length."""
    shape = model_shape(model)
    copies = torch.zeros(shape.num_layers, shape.num_heads)
    sink = torch.zeros(shape.num_layers, shape.num_heads)
    start, end = test.span
    prompt = test.ids
    steps = 0

    with recording(model) as rec:

        def on_step(token: int, _seq_len: int) -> None:
            nonlocal steps
            pos = rec.argmax
            inside = (pos >= start) & (pos < end)
            copies.add_((inside & (prompt[pos.clamp(0, len(prompt) - 1)] == token)).float())
            sink.add_(rec.sink_mass)
            steps += 1

        answer = greedy(model, tokenizer, prompt, on_step=on_step)
    return TestScore(
        answer,
        is_correct(test.needle, answer),
        (copies / (end - start)).numpy(),
        (sink / max(steps, 1)).numpy(),
    )


def _measured_on(model: PreTrainedModel, tests: list[NeedleTest]) -> dict:
    """What a head map was measured on, for its `method` record: the test grid and the model's dtype."""
    return {
        "lengths": sorted({t.length for t in tests}),
        "depths": sorted({t.depth for t in tests}),
        "needles": len({t.needle for t in tests}),
        "haystacks": sorted({t.haystack for t in tests}),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def profile(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    progress: bool = True,
    count_all: bool = False,
) -> HeadMap:
    """Retrieval-score every head over `tests`; only tests answered correctly count (as in the reference
    code), unless `count_all`. The head map records how many counted and how long it took."""
    if not tests:
        raise HeadwiseError("profile needs at least one needle test")
    check_lengths(model, [t.length for t in tests])
    shape = model_shape(model)
    began = time.perf_counter()
    results = [score_test(model, tokenizer, t) for t in tqdm(tests, desc="profile", unit="test", disable=not progress)]
    counted = [r for r in results if r.correct or count_all]
    if not counted:
        raise HeadwiseError(
            f"the model answered none of the {len(tests)} needle tests correctly, so no head can be scored; "
            "use shorter --lengths (the default model is reliable up to about 1-2K tokens)"
        )
    return HeadMap(
        model=model_id(model),
        scores=np.mean([r.retrieval for r in counted], axis=0),
        num_kv_heads=shape.num_kv_heads,
        sink=np.mean([r.sink for r in results], axis=0),
        method={
            "score": "retrieval (Wu et al. 2024): share of needle tokens copied by argmax attention at decode steps",
            "sink_score": "mean decode-step attention mass on the first 4 tokens",
            "counted_rule": "all tests" if count_all else "answer ROUGE-1 recall of the gold answer > 0.5",
            "tests": len(tests),
            "tests_counted": len(counted),
            **_measured_on(model, tests),
            "seconds": round(time.perf_counter() - began, 1),
        },
    )


def profile_context(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    sink: int = 4,
    window: int = WINDOW,
    progress: bool = True,
) -> HeadMap:
    """Context-score every head over `tests`: the mean relative change of its output on the question and
    answer tokens when it attends only the first `sink` and last `window` tokens. This ranks heads by
    what a sink + window cache would cost them, which is what a head-wise cache must decide on;
    every test counts, right or wrong, since the change does not depend on the answer."""
    if not tests:
        raise HeadwiseError("profile needs at least one needle test")
    check_lengths(model, [t.length for t in tests])
    began = time.perf_counter()
    with window_probing(model, sink, window) as probe:
        for test in tqdm(tests, desc="context profile", unit="test", disable=not progress):
            greedy(model, tokenizer, test.ids)
    return HeadMap(
        model=model_id(model),
        scores=(probe.total / probe.count.clamp_min(1)).numpy(),
        num_kv_heads=model_shape(model).num_kv_heads,
        kind="context",
        method={
            "score": f"context: mean ||o_full - o_window|| / ||o_full|| of a head's output on the last "
            f"{probe.rows} prompt tokens and every answer token, window = first {sink} + last {window} tokens",
            "sink": sink,
            "window": window,
            "tests": len(tests),
            **_measured_on(model, tests),
            "seconds": round(time.perf_counter() - began, 1),
        },
    )


@dataclass
class _GateSample:
    """One training prompt for the gates: its full-attention KV cache, the full cache's greedy answer
    (the decode inputs) and the full model's log-probabilities after each answer token (the targets)."""

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
    """Prefill the prompt with full attention, answer greedily, and keep what gate training replays.
    None when the answer is a single token: the prefill alone decides it, so no gate can change it."""
    prompt_cache = DynamicCache(config=model.config)
    stops = stop_ids(model, tokenizer)
    out = model(test.ids[None].to(model.device), past_key_values=prompt_cache, use_cache=True, logits_to_keep=1)
    cache = _replay(prompt_cache)
    tokens = [int(out.logits[0, -1].argmax())]
    logps = []
    while tokens[-1] not in stops and len(tokens) < MAX_NEW_TOKENS:
        out = model(torch.tensor([[tokens[-1]]], device=model.device), past_key_values=cache, use_cache=True)
        logps.append(out.logits[0, -1].float().log_softmax(-1))
        tokens.append(int(out.logits[0, -1].argmax()))
    if not logps:
        return None
    return _GateSample(prompt_cache, torch.tensor(tokens[:-1], device=model.device), torch.stack(logps))


def _train_gates(
    model: PreTrainedModel,
    samples: list[_GateSample],
    gates: WindowGates,
    steps: int,
    l1: float,
    lr: float,
    progress: bool,
) -> list[float]:
    """Fit `gates` with Adam for `steps` steps of one sample each, every pass over the samples in a fresh
    shuffled order; gates are clamped to [0, 1] and the model's own weights stay frozen. Returns the mean
    loss of each pass (the last one may be partial)."""
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    order = torch.Generator().manual_seed(0)
    history, queue, total, done = [], [], 0.0, 0
    try:
        with gating(model, gates):
            for step in tqdm(range(steps), desc="gates: train", unit="step", disable=not progress):
                if not queue:
                    queue = torch.randperm(len(samples), generator=order).tolist()
                s = samples[queue.pop(0)]
                logits = model(s.inputs[None], past_key_values=_replay(s.cache), use_cache=True).logits[0]
                kl = F.kl_div(logits.float().log_softmax(-1), s.target, log_target=True, reduction="none")
                loss = kl.sum(-1).mean() + l1 * gates.gate[sorted(gates.layers)].mean()
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
class GateData:
    """What gate training replays, prepared once so that several trainings (an L1 sweep) can share it."""

    tests: list[NeedleTest]
    samples: list[_GateSample]
    seconds: float


def gate_data(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
) -> GateData:
    """Prefill every test with full attention and record the full cache's answer (see fit_gates)."""
    if not tests:
        raise HeadwiseError("profile needs at least one needle test")
    check_lengths(model, [t.length for t in tests])
    began = time.perf_counter()
    samples = [_gate_sample(model, tokenizer, t) for t in tqdm(tests, desc="gates: prefill", disable=not progress)]
    samples = [s for s in samples if s is not None]
    if not samples:
        raise HeadwiseError("every answer was a single token, which no gate can change; use other needle tests")
    return GateData(tests, samples, time.perf_counter() - began)


def fit_gates(
    model: PreTrainedModel,
    data: GateData,
    sink: int = 4,
    window: int = WINDOW,
    steps: int = GATE_STEPS,
    l1: float = GATE_L1,
    lr: float = 0.02,
    progress: bool = True,
) -> HeadMap:
    """Gate-score every KV head, DuoAttention-style: learn one gate per KV head that mixes full and
    sink + window attention, so that the answers' next-token distributions stay those of the full cache
    (KL) while an L1 penalty pushes gates to 0. The gate a head keeps is what losing its distant context
    costs the answer, interactions between heads included, which a head-wise cache must rank by.

    Only the answer tokens are decoded with gates, after a full-attention prefill of the prompt: that is
    how a HeadwiseCache serves them, so each step is cheap and matches deployment. Query heads of one
    KV head share its gate in the returned map; the model's own sliding-window layers score 0."""
    shape = model_shape(model)
    began = time.perf_counter()
    sliding = sliding_layers(model)
    gates = WindowGates(
        shape.num_layers, shape.num_kv_heads, sink, window, [i for i in range(shape.num_layers) if i not in sliding]
    )
    history = _train_gates(model, data.samples, gates, steps, l1, lr, progress)
    kv = gates.gate.detach().cpu().numpy().astype(np.float64)
    kv[list(sliding)] = 0.0  # never gated: the model windows these layers itself
    tests = data.tests
    return HeadMap(
        model=model_id(model),
        scores=np.repeat(kv, shape.num_heads // shape.num_kv_heads, axis=1),
        num_kv_heads=shape.num_kv_heads,
        kind="gates",
        method={
            "score": "gates (DuoAttention-style): per KV head, the trained weight of full over sink + window "
            f"attention at answer decoding; KL to the full cache's answer distributions + {l1} x mean gate",
            "sink": sink,
            "window": window,
            "steps": steps,
            "lr": lr,
            "l1": l1,
            "loss_per_pass": history,
            "tests": len(tests),
            "tests_used": len(data.samples),
            **_measured_on(model, tests),
            "seconds": round(data.seconds + time.perf_counter() - began, 1),
        },
    )


def profile_gates(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tests: list[NeedleTest],
    sink: int = 4,
    window: int = WINDOW,
    steps: int = GATE_STEPS,
    l1: float = GATE_L1,
    progress: bool = True,
) -> HeadMap:
    """Gate-score every KV head on `tests` (gate_data, then fit_gates)."""
    return fit_gates(model, gate_data(model, tokenizer, tests, progress), sink, window, steps, l1, progress=progress)
