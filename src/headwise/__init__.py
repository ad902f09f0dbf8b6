"""headwise: find the attention heads that retrieve from long contexts, prove them causally, and put them
to work (head-wise KV caches, reading beyond the window, attention re-ranking).

    import headwise as hw
    model, tokenizer = hw.load_model("smollm2-135m")
    headmap = hw.shipped_headmap("smollm2-135m")
    answer = hw.read(model, tokenizer, text, "Who wrote the letter?", headmap)

Names are imported on first use, so `import headwise` is instant and loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from headwise.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "load_model": "headwise.core.models",
    "HeadMap": "headwise.core.headmap",
    "shipped_headmap": "headwise.core.shipped",
    "cache_headmap": "headwise.core.shipped",
    "AttentionHook": "headwise.core.hooks",
    "AttentionCall": "headwise.core.hooks",
    "attach": "headwise.core.hooks",
    "mask_heads": "headwise.core.masks",
    "HeadwiseCache": "headwise.core.cache",
    "CachePolicy": "headwise.core.policy",
    "build_cache": "headwise.core.caches",
    "compressed": "headwise.core.caches",
    "profile": "headwise.scores",
    "ReaderConfig": "headwise.apps.config",
    "read": "headwise.apps.reader",
    "Answer": "headwise.apps.reader",
    "Doc": "headwise.apps.rank",
    "rank": "headwise.apps.rank",
    "load_docs": "headwise.apps.rank",
    "Reading": "headwise.apps.rank",
    "profile_relevance": "headwise.eval.relevance",
    "Needle": "headwise.core.needles",
    "NeedleGrid": "headwise.eval.grids",
    "needle_tests": "headwise.eval.tasks",
    "load_needles": "headwise.eval.tasks",
    "load_haystack": "headwise.eval.haystack",
    "ablate": "headwise.eval.ablate",
    "run_niah": "headwise.eval.niah",
    "run_ruler": "headwise.eval.ruler",
    "RulerResult": "headwise.eval.ruler",
    "report": "headwise.reports",
    "HeadwiseError": "headwise.errors",
}

__all__ = [
    "Answer",
    "AttentionCall",
    "AttentionHook",
    "CachePolicy",
    "Doc",
    "HeadMap",
    "HeadwiseCache",
    "HeadwiseError",
    "Needle",
    "NeedleGrid",
    "ReaderConfig",
    "Reading",
    "RulerResult",
    "__version__",
    "ablate",
    "attach",
    "build_cache",
    "cache_headmap",
    "compressed",
    "load_docs",
    "load_haystack",
    "load_model",
    "load_needles",
    "mask_heads",
    "needle_tests",
    "profile",
    "profile_relevance",
    "rank",
    "read",
    "report",
    "run_niah",
    "run_ruler",
    "shipped_headmap",
]

if TYPE_CHECKING:
    from headwise.apps.config import ReaderConfig
    from headwise.apps.rank import Doc, Reading, load_docs, rank
    from headwise.apps.reader import Answer, read
    from headwise.core.cache import HeadwiseCache
    from headwise.core.caches import build_cache, compressed
    from headwise.core.headmap import HeadMap
    from headwise.core.hooks import AttentionCall, AttentionHook, attach
    from headwise.core.masks import mask_heads
    from headwise.core.models import load_model
    from headwise.core.needles import Needle
    from headwise.core.policy import CachePolicy
    from headwise.core.shipped import cache_headmap, shipped_headmap
    from headwise.errors import HeadwiseError
    from headwise.eval.ablate import ablate
    from headwise.eval.grids import NeedleGrid
    from headwise.eval.haystack import load_haystack
    from headwise.eval.niah import run_niah
    from headwise.eval.relevance import profile_relevance
    from headwise.eval.ruler import RulerResult, run_ruler
    from headwise.eval.tasks import load_needles, needle_tests
    from headwise.reports import report
    from headwise.scores import profile


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headwise' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
