"""One protocol for everything that reads or steers attention per head: probes, masks, gates, cache layers.

headwise registers one attention function with transformers' attention interface ("headwise"). Inside
`attach(model, *hooks)` the model attends through it, and it runs each layer's hooks in four stages,
each optional for a hook:

1. `observe(call)`: read the layer's queries, keys and values (probes);
2. `attend(call)`: compute the layer's output instead of the default (a head-wise cache layer, trained
   gates). At most one hook may attend in a layer, and no hook may observe or weigh a layer whose output
   another hook computes: its keys are not what the model would attend to. Both are refused on attach;
3. `weights(call, w)`: at decode steps (one query row), read or replace the float32 attention weights
   (batch, heads, keys); the output is then computed from them (recording, uniform masks);
4. `output(call, out)`: edit the output (batch, rows, heads, head_dim) before the output projection.

A layer no hook asks for runs PyTorch SDPA unchanged, so no attention matrix is built (on CPUs with bfloat16
instructions a bfloat16 prefill's attention runs as blocked matmuls, `attention.blocked_prefill`, 1.7-3x faster).
On exit the model's own attention implementation is restored and every attribute attach set is removed,
also on error.
Attaches nest: an inner attach adds hooks to the outer one's and removes only its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from headwise.core import attention
from headwise.core.models import ModelShape, fast_dtype, model_shape
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMPLEMENTATION = "headwise"
_STATE = "_headwise_hooks"  # on the model while attached: the hooks and what to restore
_PLAN = "_headwise_plan"  # on each attention module while attached: that layer's hooks by stage


class StopForward(Exception):
    """Raised by a hook once it has what it needs, to end a forward pass whose output is not used."""


@dataclass
class AttentionCall:
    """One layer's attention call as transformers makes it. Shapes: query (batch, heads, rows, head_dim),
    key and value (batch, kv_heads, keys, head_dim); `positions` are the query rows' absolute positions
    (batch row 0). In the model's own sliding-window layers (`sliding`) the keys are a recent suffix."""

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    softcap: float | None
    sliding: bool
    positions: torch.Tensor

    @property
    def decode(self) -> bool:
        """A decode step: one query row."""
        return self.query.shape[2] == 1

    def visible(self) -> torch.Tensor:
        """(batch, 1, keys) bool: the keys the last query row may attend, by the model's mask (padding)."""
        keys = self.key.shape[2]
        if self.mask is None:
            return torch.ones(1, 1, keys, dtype=torch.bool, device=self.key.device)
        row = self.mask[:, :, -1, -keys:]
        return row if row.dtype == torch.bool else torch.isfinite(row) & (row > torch.finfo(row.dtype).min)


class AttentionHook:
    """Base class of a hook: every stage is a no-op; a hook overrides the ones it needs. `hooked_layers`
    limits it to some layers (None: every layer); it may be set in `install`, which gets the model and
    its shape when the hook is attached. `remove` is called when it is detached, also on error."""

    hooked_layers: frozenset[int] | None = None

    def install(self, model: PreTrainedModel, shape: ModelShape) -> None:
        """Prepare for `model` (allocate per-head state, check the model)."""

    def remove(self) -> None:
        """Release what install prepared."""

    def observe(self, call: AttentionCall) -> None:
        """Read the call's queries, keys and values."""

    def attend(self, call: AttentionCall) -> torch.Tensor | None:
        """The layer's output (batch, rows, heads, head_dim) computed here, or None for the default."""
        return None

    def weights(self, call: AttentionCall, weights: torch.Tensor) -> torch.Tensor:
        """At a decode step: read or replace the float32 weights (batch, heads, keys)."""
        return weights

    def output(self, call: AttentionCall, out: torch.Tensor) -> torch.Tensor:
        """Edit the output (batch, rows, heads, head_dim) before the output projection."""
        return out


STAGES = ("observe", "attend", "weights", "output")


def _uses(hook: AttentionHook, stage: str) -> bool:
    """Whether the hook's class overrides a stage."""
    return getattr(type(hook), stage) is not getattr(AttentionHook, stage)


@dataclass
class _LayerPlan:
    """One layer's hooks by stage, in the order they were attached."""

    observe: list[AttentionHook] = field(default_factory=list)
    attend: AttentionHook | None = None
    weights: list[AttentionHook] = field(default_factory=list)
    output: list[AttentionHook] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.observe or self.attend or self.weights or self.output)


def _plan(hooks: list[AttentionHook], shape: ModelShape) -> list[_LayerPlan]:
    """Each layer's plan; refuses two hooks attending in one layer, or one reading a layer another attends."""
    plans = [_LayerPlan() for _ in range(shape.num_layers)]
    for hook in hooks:
        layers = range(shape.num_layers) if hook.hooked_layers is None else sorted(hook.hooked_layers)
        for layer in layers:
            plan = plans[layer]
            for stage in ("observe", "weights", "output"):
                if _uses(hook, stage):
                    getattr(plan, stage).append(hook)
            if _uses(hook, "attend"):
                if plan.attend is not None:
                    raise HeadwiseError(
                        f"{type(plan.attend).__name__} and {type(hook).__name__} both compute layer {layer}'s "
                        "attention; attach one of them at a time"
                    )
                plan.attend = hook
            if plan.attend is not None and (plan.observe or plan.weights):
                reader = (plan.observe or plan.weights)[0]
                raise HeadwiseError(
                    f"{type(reader).__name__} cannot read layer {layer}'s attention while "
                    f"{type(plan.attend).__name__} computes it (its keys are not the model's); "
                    "use a plain cache while probing or masking by attention"
                )
    return plans


@dataclass
class _State:
    """What attach keeps on a model: the hooks attached, the attention modules, what to restore."""

    modules: list[torch.nn.Module]
    shape: ModelShape
    implementation: str
    hooks: list[AttentionHook] = field(default_factory=list)

    def replan(self) -> None:
        """Give every attention module its layer's plan for the hooks attached now."""
        for module, plan in zip(self.modules, _plan(self.hooks, self.shape), strict=True):
            setattr(module, _PLAN, plan)


def attention_modules(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The self-attention modules, in layer order (they carry `layer_idx` and `scaling`)."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "scaling")]
    layers = model_shape(model).num_layers
    if len(mods) != layers:
        raise HeadwiseError(
            f"{type(model).__name__}: found {len(mods)} attention modules for {layers} layers; "
            "this attention layout is not supported"
        )
    return sorted(mods, key=lambda m: m.layer_idx)


@contextmanager
def attach(model: PreTrainedModel, *hooks: AttentionHook) -> Iterator[PreTrainedModel]:
    """Run `hooks` in the model's attention while the block runs; restore the model on exit."""
    state: _State | None = getattr(model, _STATE, None)
    outer = state is None
    if outer:
        if getattr(model.config, "use_bidirectional_attention", False):
            raise HeadwiseError("bidirectional attention models are not supported")
        state = _State(attention_modules(model), model_shape(model), model.config._attn_implementation)
        setattr(model, _STATE, state)
        model.set_attn_implementation(IMPLEMENTATION)
    installed: list[AttentionHook] = []
    try:
        for hook in hooks:
            hook.install(model, state.shape)
            installed.append(hook)
        state.hooks.extend(hooks)
        state.replan()
        yield model
    finally:
        state.hooks = [h for h in state.hooks if all(h is not mine for mine in hooks)]
        for hook in reversed(installed):
            hook.remove()
        if outer:
            for module in state.modules:
                if hasattr(module, _PLAN):
                    delattr(module, _PLAN)
            delattr(model, _STATE)
            model.set_attn_implementation(state.implementation)
        else:
            state.replan()


def attached(model: PreTrainedModel) -> list[AttentionHook]:
    """The hooks attached to `model` now, outermost first."""
    state: _State | None = getattr(model, _STATE, None)
    return list(state.hooks) if state else []


def _decode_attention(call: AttentionCall, hooks: list[AttentionHook]) -> torch.Tensor:
    """A decode step's output from explicit float32 weights that `hooks` read or replace in turn."""
    batch, heads = call.query.shape[:2]
    kv_heads, keys = call.key.shape[1], call.key.shape[2]
    scores = attention.logits(call.query, call.key, call.scaling, call.softcap)  # (b, kv, g, 1, t)
    visible = call.visible()[:, :, None, None]  # (b, 1, 1, 1, t)
    weights = attention.masked_softmax(scores, visible).reshape(batch, heads, keys)
    for hook in hooks:
        weights = hook.weights(call, weights)
    out = attention.weighted_values(weights.view(batch, kv_heads, heads // kv_heads, 1, keys), call.value)
    return attention.ungroup(out).to(call.query.dtype)


@cache
def _cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX)."""
    return fast_dtype("cpu") == "bfloat16"


def _default_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
    kwargs: dict,
) -> torch.Tensor:
    """The layer's output as transformers' SDPA computes it; a bfloat16 prefill on a CPU with bfloat16
    instructions runs as blocked matmuls instead (`attention.blocked_prefill`), 1.7-3x faster there."""
    if _blocked_prefill_fits(module, query, key, attention_mask, dropout, kwargs):
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        return attention.blocked_prefill(query, key, value, scale, attention_mask)
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    return out


def _blocked_prefill_fits(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    kwargs: dict,
) -> bool:
    """Whether this call is a bfloat16 CPU prefill that `attention.blocked_prefill` computes exactly as SDPA
    would: as many rows as keys, causal or under one boolean mask for the batch (every row seeing a key), no
    dropout, soft-capping, sinks or position bias, on a CPU with bfloat16 instructions."""
    causal = kwargs.get("is_causal")
    fits = (
        query.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and query.shape[2] == key.shape[2] > attention.PREFILL_BLOCK
        and not dropout
        and all(kwargs.get(name) is None for name in ("softcap", "s_aux", "position_bias"))
        and _cpu_bf16()
    )
    if not fits:
        return False
    if mask is None:
        return bool(getattr(module, "is_causal", True) if causal is None else causal)
    return mask.dtype == torch.bool and mask.shape[:2] == (1, 1) and bool(mask[0, 0].any(-1).all())


def headwise_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The attention function registered as "headwise": SDPA, with the attached hooks of this layer."""
    plan: _LayerPlan | None = getattr(module, _PLAN, None)
    if not plan:
        return _default_attention(module, query, key, value, attention_mask, dropout, scaling, kwargs), None
    positions = kwargs.get("position_ids")
    if positions is None:  # the query rows end the keys
        positions = torch.arange(key.shape[2] - query.shape[2], key.shape[2], device=key.device)
    call = AttentionCall(
        module.layer_idx,
        query,
        key,
        value,
        attention_mask,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
        kwargs.get("softcap"),
        bool(getattr(module, "sliding_window", None)),
        positions.reshape(-1, query.shape[2])[0],
    )
    for hook in plan.observe:
        hook.observe(call)
    out = plan.attend.attend(call) if plan.attend is not None else None
    if out is None and call.decode and plan.weights:
        if kwargs.get("s_aux") is not None:
            raise HeadwiseError("models with attention sinks (s_aux) cannot be read by attention weights yet")
        out = _decode_attention(call, plan.weights)
    if out is None:
        out = _default_attention(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    for hook in plan.output:
        out = hook.output(call, out)
    return out, None


AttentionInterface.register(IMPLEMENTATION, headwise_attention)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
