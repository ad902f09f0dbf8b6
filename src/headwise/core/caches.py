"""The cache kinds a CachePolicy names, each built for one prompt, and `compressed()`, which gives every
`model.generate()` call in a block its own head-wise cache."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from transformers import Cache, DynamicCache

from headwise.core.cache import HeadwiseCache, HeadwiseLayer
from headwise.core.headmap import HeadMap
from headwise.core.hooks import attach
from headwise.core.models import model_shape
from headwise.core.policy import CACHES, CachePolicy
from headwise.core.registry import lookup
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def full_cache(model: PreTrainedModel, policy: CachePolicy, length: int, headmap: HeadMap | None) -> Cache:
    """The plain cache: every head keeps every token."""
    return DynamicCache(config=model.config)


def headwise_cache(model: PreTrainedModel, policy: CachePolicy, length: int, headmap: HeadMap | None) -> Cache:
    """The head map's top KV heads in full, sink + window for the rest, within the budget at `length` tokens."""
    if headmap is None:
        raise HeadwiseError("the headwise cache needs a head map to rank KV heads by")
    return HeadwiseCache.from_headmap(
        model, headmap, policy.budget, sink=policy.sink, window=policy.window, context_length=length,
        reduce=policy.reduce,
    )  # fmt: skip


def window_cache(model: PreTrainedModel, policy: CachePolicy, length: int, headmap: HeadMap | None) -> Cache:
    """StreamingLLM: every head keeps the sink and a recent window sized to the budget at `length` tokens."""
    window = max(1, round(policy.budget * length) - policy.sink)
    return HeadwiseCache.for_heads(model, [[] for _ in range(model_shape(model).num_layers)], policy.sink, window)


def build_cache(model: PreTrainedModel, policy: CachePolicy, length: int, headmap: HeadMap | None = None) -> Cache:
    """An empty cache of `policy`'s kind for a prompt of `length` tokens (the headwise kind ranks by `headmap`)."""
    return lookup(CACHES, policy.kind, "cache")(model, policy, length, headmap)


def from_prefill(prefilled: DynamicCache, cache: Cache) -> Cache:
    """`cache`, empty and of any kind build_cache makes, given what it would hold after a one-shot prefill
    whose keys and values the full cache `prefilled` holds: every kind attends in full during a one-shot
    prefill and compresses after it, so one prefill serves every cache compared on a prompt."""
    if len(prefilled.layers) != len(cache.layers):
        raise HeadwiseError(f"the prefilled cache has {len(prefilled.layers)} layers, this one {len(cache.layers)}")
    for i, (done, layer) in enumerate(zip(prefilled.layers, cache.layers, strict=True)):
        if isinstance(layer, HeadwiseLayer):
            layer.update(done.keys, done.values)  # keeps its heads' share of the prompt, as a prefill would
            layer.step = None
        else:  # a plain or sliding layer holds what the prefill left; updates replace its tensors, never edit them
            cache.layers[i] = copy.copy(done)
    return cache


@contextmanager
def compressed(
    model: PreTrainedModel, headmap: HeadMap, budget: float = 0.3, sink: int | None = None, window: int | None = None
) -> Iterator[PreTrainedModel]:
    """Within the block, every `model.generate()` call without its own cache (so every text-generation
    pipeline on this model) gets a fresh HeadwiseCache sized to its prompt, attached for the call; the
    model's own generate is restored on exit. Prompts no longer than sink + window drop nothing and
    get a plain cache."""
    headmap.check_model(model)
    settings = {k: v for k, v in {"sink": sink, "window": window}.items() if v is not None}
    policy = CachePolicy("headwise", budget, **settings)
    original = model.generate

    def generate(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        given = kwargs.get("cache", kwargs.get("past_key_values"))
        if given is not None or ids is None or ids.shape[-1] <= policy.sink + policy.window:
            return original(*args, **kwargs)
        cache = build_cache(model, policy, ids.shape[-1], headmap)
        with attach(model, cache):
            return original(*args, cache=cache, **kwargs)

    model.generate = generate
    try:
        yield model
    finally:
        del model.generate  # the class's own generate shows through again
