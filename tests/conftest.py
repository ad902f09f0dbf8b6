"""Shared fixtures: the real default model, loaded once per test session."""

import os

# No hub on CI machines: fail fast instead of retrying the network for unknown ids.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from headwise.core.models import load_model
from headwise.eval.haystack import load_haystack


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) for SmolLM2-135M-Instruct in float32."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer, head map) for Gemma 3 270M in float32: sliding-window layers, one KV head."""
    from headwise.core.shipped import shipped_headmap

    model, tok = load_model("gemma3-270m")
    return model, tok, shipped_headmap("gemma3-270m")


@pytest.fixture(scope="session")
def book():
    """The default shipped haystack."""
    return load_haystack("frankenstein")
