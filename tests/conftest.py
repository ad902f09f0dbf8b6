"""Shared fixtures: the real default model, loaded once per test session."""

import os
from pathlib import Path

# No hub on CI machines: fail fast instead of retrying the network for unknown ids.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from headwise.haystack import load_haystack
from headwise.models import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) for SmolLM2-135M-Instruct in float32."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer, head map) for Gemma 3 270M in float32: sliding-window layers, one KV head."""
    from headwise.headmap import HeadMap

    model, tok = load_model("gemma3-270m")
    return model, tok, HeadMap.load(ROOT / "bench/results/gemma3-270m/headmap-frankenstein.json", model)


@pytest.fixture(scope="session")
def book():
    """The default shipped haystack."""
    return load_haystack("frankenstein")
