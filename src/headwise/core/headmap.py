"""HeadMap: one score per attention head, with the model it belongs to and how it was measured. It is the
one data type every command accepts: profiles write it, ablation, caches, the reader and the ranker read it.
Files: the native versioned JSON, plus Retrieval_Head's JSON and DuoAttention's TSV (formats.py)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from headwise.core import formats
from headwise.core.models import ModelShape, model_id, model_shape
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FORMAT = "headwise.headmap"
VERSION = 1
Head = tuple[int, int]  # (layer, query head)
Top = int | float | str  # how many top heads: a count (14), a fraction (0.05) or a percentage ("5%")
REDUCES = ("max", "mean")


@dataclass
class HeadMap:
    """Scores of shape (layers, query heads); `num_kv_heads` KV heads, each shared by `kv_group` query heads.
    `kind` names the score (retrieval, context, gates, ...), `method` records how it was measured, `sink` is an
    optional second table of the same shape (attention mass on the first tokens)."""

    model: str
    scores: np.ndarray
    num_kv_heads: int
    kind: str = "retrieval"
    method: dict = field(default_factory=dict)
    sink: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scores.ndim != 2 or self.scores.size == 0:
            raise HeadwiseError(
                f"head map scores must be a non-empty layers x heads table, got shape {self.scores.shape}"
            )
        if not np.isfinite(self.scores).all():
            raise HeadwiseError("head map scores contain NaN or infinite values")
        if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
            raise HeadwiseError(f"{self.num_heads} query heads cannot be grouped over {self.num_kv_heads} KV heads")
        if self.sink is not None:
            self.sink = np.asarray(self.sink, dtype=np.float64)
            if self.sink.shape != self.scores.shape:
                raise HeadwiseError(f"sink scores have shape {self.sink.shape}, scores {self.scores.shape}")

    @property
    def num_layers(self) -> int:
        """Layers in the model."""
        return self.scores.shape[0]

    @property
    def num_heads(self) -> int:
        """Query heads per layer."""
        return self.scores.shape[1]

    @property
    def kv_group(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    def count(self, top: Top) -> int:
        """How many heads `top` asks for (a count, a fraction below 1 or a percentage), checked against the total."""
        total = self.scores.size
        try:
            value = float(top[:-1]) / 100 if isinstance(top, str) and top.endswith("%") else float(top)
        except ValueError:
            raise HeadwiseError(
                f"top must be a count (14), a fraction (0.05) or a percentage (5%), got {top!r}"
            ) from None
        if 0 < value < 1:
            count = max(1, round(value * total))
        elif value.is_integer():
            count = int(value)
        else:
            raise HeadwiseError(f"top={top!r} is neither a whole count nor a fraction below 1")
        if not 1 <= count <= total:
            raise HeadwiseError(f"top={top} asks for {count} heads; this model has {total} heads, choose 1..{total}")
        return count

    def top(self, top: Top) -> list[Head]:
        """The `top` highest-scoring (layer, head) pairs, best first; ties broken by position."""
        order = np.argsort(-self.scores, axis=None, kind="stable")[: self.count(top)]
        return [(int(i // self.num_heads), int(i % self.num_heads)) for i in order]

    def above(self, threshold: float = 0.1) -> list[Head]:
        """Heads scoring above `threshold` (0.1 is Wu et al.'s retrieval-head line), best first."""
        return [h for h in self.top(self.scores.size) if self.scores[h] > threshold]

    def weights(self, top: Top) -> np.ndarray:
        """(layers, heads): 1 for the `top` heads, 0 elsewhere; what the reader and the ranker read through."""
        weights = np.zeros(self.scores.shape)
        for head in self.top(top):
            weights[head] = 1.0
        return weights

    def kv_scores(self, reduce: str = "max") -> np.ndarray:
        """(layers, KV heads): each KV head scored by its query heads' max (default) or mean.

        A KV head must be kept whole if any query head reading it retrieves, hence max by default."""
        if reduce not in REDUCES:
            raise HeadwiseError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        grouped = self.scores.reshape(self.num_layers, self.num_kv_heads, self.kv_group)
        return grouped.max(-1) if reduce == "max" else grouped.mean(-1)

    def best_kv_heads(self, n: int, skip: Collection[int] = (), reduce: str = "max") -> list[list[int]]:
        """Per layer, which of the `n` best KV heads (by `kv_scores(reduce)`) it holds; layers in `skip` (a
        model's sliding-window layers, which keep their own cache) hold none. What a head-wise cache keeps full."""
        kv = self.kv_scores(reduce)
        kv[list(skip)] = -np.inf
        full: list[list[int]] = [[] for _ in range(self.num_layers)]
        for i in np.argsort(-kv, axis=None, kind="stable")[:n]:
            full[int(i // self.num_kv_heads)].append(int(i % self.num_kv_heads))
        return full

    def with_ties_broken_by(self, other: HeadMap) -> HeadMap:
        """This map with heads of (nearly) equal score ordered by `other`'s ranking: each head gains up to
        1e-3 of this map's scale by its rank there. Ranks, not scores, so the order survives 6-decimal saving."""
        if other.scores.shape != self.scores.shape:
            raise HeadwiseError(f"cannot break ties with a {other.scores.shape} map in a {self.scores.shape} map")
        n = other.scores.size
        rank = np.empty(n)
        rank[np.argsort(-other.scores, axis=None, kind="stable")] = np.arange(n)
        scale = 1e-3 * (np.abs(self.scores).max() or 1.0)
        bonus = scale * (n - rank.reshape(self.scores.shape)) / n
        tie_break = f"{other.kind} rank, up to {scale:.3g} added: {other.method.get('score', 'unrecorded')}"
        return replace(self, scores=self.scores + bonus, method={**self.method, "tie_break": tie_break})

    def check_shape(self, shape: ModelShape, name: str) -> None:
        """Refuse a map of another attention shape than the model `name` has."""
        if (self.num_layers, self.num_heads, self.num_kv_heads) != (
            shape.num_layers,
            shape.num_heads,
            shape.num_kv_heads,
        ):
            raise HeadwiseError(
                f"head map is for {self.model!r} with {self.num_layers} layers x {self.num_heads} heads "
                f"({self.num_kv_heads} KV heads), but the model has {shape.num_layers} x {shape.num_heads} "
                f"({shape.num_kv_heads} KV heads); profile this model first: headwise profile --model {name}"
            )

    def check_model(self, model: PreTrainedModel) -> None:
        """Refuse a head map measured on a model of a different name or attention shape."""
        name = model_id(model)
        self.check_shape(model_shape(model), name)
        if self.model != name and Path(self.model).name != Path(name).name:
            raise HeadwiseError(
                f"head map was measured on {self.model!r}, not {name!r}; "
                f"profile this model first: headwise profile --model {name}"
            )

    def summary(self, top: int = 10) -> str:
        """A short human-readable list of the top heads."""
        best = ", ".join(f"L{l}H{h}={self.scores[l, h]:.3f}" for l, h in self.top(min(top, self.scores.size)))
        above = len(self.above(0.1))
        return f"{above}/{self.scores.size} heads ({above / self.scores.size:.1%}) score above 0.1; top: {best}"

    def to_dict(self) -> dict:
        """The native versioned JSON document."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "kind": self.kind,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "scores": np.round(self.scores, 6).tolist(),
            "method": self.method,
        }
        if self.sink is not None:
            doc["sink"] = np.round(self.sink, 6).tolist()
        return doc

    @classmethod
    def from_dict(cls, doc: dict, source: str = "head map") -> HeadMap:
        """Validate and build from the native JSON document; `source` names it in errors."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise HeadwiseError(f'{source} is not a headwise head map (no "format": "{FORMAT}")')
        if doc.get("version") != VERSION:
            raise HeadwiseError(
                f"{source} has head map version {doc.get('version')}; this headwise reads version {VERSION}"
            )
        try:
            hm = cls(
                doc["model"],
                np.asarray(doc["scores"], dtype=np.float64),
                int(doc["num_kv_heads"]),
                doc.get("kind", "retrieval"),
                doc.get("method", {}),
                doc.get("sink"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadwiseError(f"{source} is malformed ({exc.__class__.__name__}: {exc})") from None
        if hm.scores.shape != (doc.get("num_layers"), doc.get("num_heads")):
            raise HeadwiseError(
                f"{source}: scores are {hm.scores.shape[0]} x {hm.scores.shape[1]} but the header says "
                f"{doc.get('num_layers')} x {doc.get('num_heads')}"
            )
        return hm

    def save(self, path: str | Path) -> Path:
        """Write the native JSON, or Retrieval_Head JSON (*.rh.json) or DuoAttention TSV (*.tsv) by suffix."""
        path = Path(path)
        if path.suffix == ".tsv":
            text = formats.duo_tsv(self.kv_scores())
        elif path.name.endswith(".rh.json"):
            text = formats.retrieval_head_json(self.scores)
        else:
            text = json.dumps(self.to_dict(), indent=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path, model: PreTrainedModel | None = None) -> HeadMap:
        """Read a head map in any supported format; with `model`, also check it belongs to that model.
        Retrieval_Head JSON and DuoAttention TSV carry no model name or KV grouping: they need `model`."""
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HeadwiseError(f"cannot read head map {path}: {exc}") from None
        doc = None
        if path.suffix != ".tsv":
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise HeadwiseError(f"head map {path} is not valid JSON: {exc}") from None
        if doc is not None and not formats.is_retrieval_head(doc):
            headmap = cls.from_dict(doc, str(path))
        else:
            what = "a DuoAttention TSV" if doc is None else "a Retrieval_Head map"
            if model is None:
                raise HeadwiseError(f"{path} is {what} without a model name; pass the model to import it")
            shape, origin = model_shape(model), {"file": str(path)}
            if doc is None:
                kv = formats.parse_duo_tsv(text, shape, path)
                scores, kind, origin["imported_from"] = np.repeat(kv, shape.group, axis=1), "duo_gate", "DuoAttention"
            else:
                scores = formats.parse_retrieval_head(doc, shape, path)
                kind, origin["imported_from"] = "retrieval", "Retrieval_Head"
            headmap = cls(model_id(model), scores, shape.num_kv_heads, kind=kind, method=origin)
        if model is not None:
            headmap.check_model(model)
        return headmap

    def plot(self, path: str | Path, label_top: int = 10, threshold: float = 0.1) -> Path:
        """Heatmap PNG, layers x heads, colour = score; the top heads are labelled with their score."""
        from headwise.plots import headmap_heatmap

        count = int((self.scores > threshold).sum())
        title = f"{self.kind} scores: {self.model}\n{count} of {self.scores.size} heads above {threshold}"
        labels = {h: f"{self.scores[h]:.2f}" for h in self.top(min(label_top, self.scores.size))}
        return headmap_heatmap(self.scores, labels, title, f"{self.kind} score", Path(path))


def overlap(a: HeadMap, b: HeadMap, top: int = 10) -> int:
    """How many of the `top` heads two maps share (a stability measure)."""
    return len(set(a.top(top)) & set(b.top(top)))
