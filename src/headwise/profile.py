"""Score every head: the retrieval score of Wu et al. 2024 and a sink (streaming) score, from decode steps
only; and, for caches, the context score: how much a head's output changes when it sees only sink + window."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from headwise.cache import WINDOW
from headwise.errors import HeadwiseError
from headwise.generate import greedy
from headwise.headmap import HeadMap
from headwise.models import check_lengths, model_id, model_shape
from headwise.probe import recording, window_probing
from headwise.tasks import NeedleTest, is_correct

DEFAULT_LENGTHS = [500, 1000, 1500]
DEFAULT_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
DEFAULT_NEEDLES = 4


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
            "lengths": sorted({t.length for t in tests}),
            "depths": sorted({t.depth for t in tests}),
            "needles": len({t.needle for t in tests}),
            "haystacks": sorted({t.haystack for t in tests}),
            "dtype": str(model.dtype).removeprefix("torch."),
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
            "lengths": sorted({t.length for t in tests}),
            "depths": sorted({t.depth for t in tests}),
            "needles": len({t.needle for t in tests}),
            "haystacks": sorted({t.haystack for t in tests}),
            "dtype": str(model.dtype).removeprefix("torch."),
            "seconds": round(time.perf_counter() - began, 1),
        },
    )
