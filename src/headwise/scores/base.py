"""What every head score shares: the protocol a score class follows, and the record of what it was measured on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from headwise.core.models import check_model_lengths
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from headwise.core.headmap import HeadMap
    from headwise.core.needles import NeedleTest


class Score(Protocol):
    """A way to score every head: `measure` runs it on needle tests and returns a HeadMap of kind `kind`."""

    kind: str

    def measure(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tests: list[NeedleTest], progress: bool = True
    ) -> HeadMap: ...


def check_tests(model: PreTrainedModel, tests: list[NeedleTest]) -> None:
    """Refuse an empty test list and contexts beyond the model's window."""
    if not tests:
        raise HeadwiseError("profiling needs at least one needle test")
    check_model_lengths(model, [t.length for t in tests])


def measured_on(model: PreTrainedModel, tests: list[NeedleTest]) -> dict:
    """What a head map was measured on, for its `method` record: the test grid and the model's dtype."""
    return {
        "lengths": sorted({t.length for t in tests}),
        "depths": sorted({t.depth for t in tests}),
        "needles": len({t.needle for t in tests}),
        "haystacks": sorted({t.haystack for t in tests}),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
