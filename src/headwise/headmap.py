"""HeadMap: one score per attention head, with the model it belongs to and how it was measured.

The native format is a versioned JSON file. Retrieval_Head's `{"layer-head": [scores]}` JSON and
DuoAttention's layers x KV-heads TSV are read and written too, so patterns move between tools.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from headwise.errors import HeadwiseError
from headwise.models import model_id, model_shape

FORMAT = "headwise.headmap"
VERSION = 1
Head = tuple[int, int]


@dataclass
class HeadMap:
    """Scores of shape (layers, query heads); `kv_group` query heads share one KV head."""

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

    def resolve_k(self, k: int | float | str) -> int:
        """A head count from a count (14), a fraction (0.05) or a percentage ("5%"); checked against the total."""
        total = self.scores.size
        try:
            value = float(k[:-1]) / 100 if isinstance(k, str) and k.endswith("%") else float(k)
        except ValueError:
            raise HeadwiseError(f"k must be a count (14), a fraction (0.05) or a percentage (5%), got {k!r}") from None
        if 0 < value < 1:
            count = max(1, round(value * total))
        elif value.is_integer():
            count = int(value)
        else:
            raise HeadwiseError(f"k={k!r} is neither a whole count nor a fraction below 1")
        if not 1 <= count <= total:
            raise HeadwiseError(f"k={k} asks for {count} heads; this model has {total} heads, choose 1..{total}")
        return count

    def top(self, k: int | float | str) -> list[Head]:
        """The k highest-scoring (layer, head) pairs, best first; ties broken by position."""
        order = np.argsort(-self.scores, axis=None, kind="stable")[: self.resolve_k(k)]
        return [(int(i // self.num_heads), int(i % self.num_heads)) for i in order]

    def above(self, threshold: float = 0.1) -> list[Head]:
        """Heads scoring above `threshold` (0.1 is Wu et al.'s retrieval-head line), best first."""
        return [h for h in self.top(self.scores.size) if self.scores[h] > threshold]

    def kv_scores(self, reduce: str = "max") -> np.ndarray:
        """(layers, KV heads): each KV head scored by its query heads' max (default) or mean.

        A KV head must be kept whole if any query head reading it retrieves, hence max by default."""
        grouped = self.scores.reshape(self.num_layers, self.num_kv_heads, self.kv_group)
        if reduce not in ("max", "mean"):
            raise HeadwiseError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        return grouped.max(-1) if reduce == "max" else grouped.mean(-1)

    def with_ties_broken_by(self, other: HeadMap) -> HeadMap:
        """This map with heads of (nearly) equal score ordered by `other`'s ranking: each head gains up to
        1e-3 of this map's scale by its rank there. Trained gates leave many KV heads at exactly 0, which
        would otherwise rank by position. Ranks, not scores, so that the order survives 6-decimal saving."""
        if other.scores.shape != self.scores.shape:
            raise HeadwiseError(f"cannot break ties with a {other.scores.shape} map in a {self.scores.shape} map")
        n = other.scores.size
        rank = np.empty(n)
        rank[np.argsort(-other.scores, axis=None, kind="stable")] = np.arange(n)
        scale = 1e-3 * (np.abs(self.scores).max() or 1.0)
        bonus = scale * (n - rank.reshape(self.scores.shape)) / n
        tie_break = f"{other.kind} rank, up to {scale:.3g} added: {other.method.get('score', 'unrecorded')}"
        return replace(self, scores=self.scores + bonus, method={**self.method, "tie_break": tie_break})

    def check_model(self, model: PreTrainedModel) -> None:
        """Refuse a head map measured on a model of a different name or attention shape."""
        shape = model_shape(model)
        if (self.num_layers, self.num_heads, self.num_kv_heads) != (
            shape.num_layers,
            shape.num_heads,
            shape.num_kv_heads,
        ):
            raise HeadwiseError(
                f"head map is for {self.model!r} with {self.num_layers} layers x {self.num_heads} heads "
                f"({self.num_kv_heads} KV heads), but the model has {shape.num_layers} x {shape.num_heads} "
                f"({shape.num_kv_heads} KV heads); profile this model first: headwise profile --model {model_id(model)}"
            )
        if self.model != model_id(model) and Path(self.model).name != Path(model_id(model)).name:
            raise HeadwiseError(
                f"head map was measured on {self.model!r}, not {model_id(model)!r}; "
                f"profile this model first: headwise profile --model {model_id(model)}"
            )

    # --- native JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The versioned JSON document."""
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

    def save(self, path: str | Path) -> Path:
        """Write the native JSON (or Retrieval_Head JSON / DuoAttention TSV by a .rh.json / .tsv suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".tsv":
            text = "\n".join("\t".join(f"{v:.6f}" for v in row) for row in self.kv_scores()) + "\n"
        elif path.name.endswith(".rh.json"):
            text = json.dumps(
                {f"{l}-{h}": [float(self.scores[l, h])] for l in range(self.num_layers) for h in range(self.num_heads)}
            )
        else:
            text = json.dumps(self.to_dict(), indent=1)
        path.write_text(text)
        return path

    @classmethod
    def from_dict(cls, doc: dict, source: str = "head map") -> HeadMap:
        """Validate and build from the native JSON document."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise HeadwiseError(f'{source} is not a headwise head map (no "format": "{FORMAT}")')
        if doc.get("version") != VERSION:
            raise HeadwiseError(
                f"{source} has head map version {doc.get('version')}; this headwise reads version {VERSION}"
            )
        try:
            scores = np.asarray(doc["scores"], dtype=np.float64)
            hm = cls(
                doc["model"],
                scores,
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

    @classmethod
    def load(cls, path: str | Path, model: PreTrainedModel | None = None) -> HeadMap:
        """Read a head map in any supported format; with `model`, also check it belongs to that model.

        Retrieval_Head JSON and DuoAttention TSV carry no model name or KV grouping, so `model` is
        needed to read them (its shape fills in what the file lacks)."""
        path = Path(path)
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HeadwiseError(f"cannot read head map {path}: {exc}") from None
        if path.suffix == ".tsv":
            hm = cls._from_duo_tsv(text, path, model)
        else:
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise HeadwiseError(f"head map {path} is not valid JSON: {exc}") from None
            if isinstance(doc, dict) and "format" not in doc and doc and all("-" in str(k) for k in doc):
                hm = cls._from_retrieval_head(doc, path, model)
            else:
                hm = cls.from_dict(doc, str(path))
        if model is not None:
            hm.check_model(model)
        return hm

    @classmethod
    def _from_retrieval_head(cls, doc: dict, path: Path, model: PreTrainedModel | None) -> HeadMap:
        """Retrieval_Head's {"layer-head": [per-test scores]}: a head's score is the mean of its list."""
        if model is None:
            raise HeadwiseError(f"{path} is a Retrieval_Head map without a model name; pass the model to import it")
        shape = model_shape(model)
        scores = np.zeros((shape.num_layers, shape.num_heads))
        for key, values in doc.items():
            try:
                layer, head = (int(x) for x in key.split("-"))
                scores[layer, head] = float(np.mean(values)) if len(values) else 0.0
            except (ValueError, TypeError, IndexError):
                raise HeadwiseError(
                    f"{path}: entry {key!r} does not fit a {shape.num_layers} x {shape.num_heads} model "
                    "(keys are 'layer-head', values lists of scores)"
                ) from None
        return cls(
            model_id(model), scores, shape.num_kv_heads, method={"imported_from": "Retrieval_Head", "file": str(path)}
        )

    @classmethod
    def _from_duo_tsv(cls, text: str, path: Path, model: PreTrainedModel | None) -> HeadMap:
        """DuoAttention's layers x KV-heads gate values; each query head inherits its KV head's value."""
        if model is None:
            raise HeadwiseError(f"{path} is a DuoAttention TSV without a model name; pass the model to import it")
        shape = model_shape(model)
        try:
            kv = np.asarray([[float(v) for v in line.split()] for line in text.strip().splitlines()])
        except ValueError as exc:
            raise HeadwiseError(f"{path} is not a table of numbers: {exc}") from None
        if kv.shape != (shape.num_layers, shape.num_kv_heads):
            raise HeadwiseError(
                f"{path} has shape {kv.shape}; {model_id(model)} needs "
                f"{shape.num_layers} layers x {shape.num_kv_heads} KV heads"
            )
        scores = np.repeat(kv, shape.group, axis=1)
        return cls(
            model_id(model),
            scores,
            shape.num_kv_heads,
            kind="duo_gate",
            method={"imported_from": "DuoAttention", "file": str(path)},
        )

    # --- picture ------------------------------------------------------------------------------
    def plot(self, path: str | Path, label_top: int = 10, threshold: float = 0.1) -> Path:
        """Heatmap, layers x heads, colour = score; the top heads are labelled with their score."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(5, 0.45 * self.num_heads + 2.5), max(5, 0.25 * self.num_layers + 1.5)))
        im = ax.imshow(self.scores, aspect="auto", cmap="viridis", origin="lower")
        for layer, head in self.top(min(label_top, self.scores.size)):
            ax.text(head, layer, f"{self.scores[layer, head]:.2f}", ha="center", va="center", fontsize=7, color="white")
        count = int((self.scores > threshold).sum())
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.kind} scores: {self.model}\n{count} of {self.scores.size} heads above {threshold}")
        fig.colorbar(im, ax=ax, label=f"{self.kind} score")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def summary(self, k: int = 10) -> str:
        """A short human-readable list of the top heads."""
        tops = ", ".join(f"L{l}H{h}={self.scores[l, h]:.3f}" for l, h in self.top(min(k, self.scores.size)))
        above = len(self.above(0.1))
        frac = above / self.scores.size
        return f"{above}/{self.scores.size} heads ({frac:.1%}) score above 0.1; top: {tops}"


def overlap(a: HeadMap, b: HeadMap, k: int = 10) -> int:
    """How many of the top-k heads two maps share (a stability measure)."""
    return len(set(a.top(k)) & set(b.top(k)))


def shipped_headmap(name: str, kind: str = "retrieval") -> HeadMap:
    """A head map headwise ships for a default model: its retrieval map (bench/retrieval_heads.py),
    `kind="gates"`, KV heads ranked by trained gates (bench/kv_gates.py), or `kind="cache"`, the exact
    ranking head-wise caches use by default where it is more than the gates (bench/kv_swaps.py)."""
    from importlib import resources

    if kind not in ("retrieval", "gates", "cache"):
        raise HeadwiseError(f"shipped head maps are of kind retrieval, gates or cache, not {kind!r}")
    doc = resources.files("headwise.data.headmaps").joinpath(
        f"{name}.json" if kind == "retrieval" else f"{name}-{kind}.json"
    )
    if not doc.is_file():
        score = " --score gates" if kind == "gates" else ""
        raise HeadwiseError(
            f"headwise ships no {kind} head map for {name!r}; run: headwise profile --model {name}{score}"
        )
    return HeadMap.from_dict(json.loads(doc.read_text("utf-8")), f"shipped {kind} head map {name}")


def cache_headmap(name: str) -> HeadMap:
    """The map a head-wise cache ranks KV heads by when none is given: the shipped cache map where there is
    one; else the shipped gate map (on fresh needles and prose it kept more answers at a 30% budget than the
    retrieval score) with the heads it leaves tied ordered by the retrieval map rather than by position; else
    the shipped retrieval map. SmolLM2's cache map is its gate map (trained on needles and made-up-name
    needles, `bench/kv_gates.py --data needles,names`) with the 62 of 90 KV heads at gate 0 so ordered
    (windowing the last layers broke multi-token copies above a 35% budget), then 3 pairs of KV heads swapped
    by what each one alone costs the answers at 30% (`bench/kv_swaps.py`)."""
    with contextlib.suppress(HeadwiseError):
        return shipped_headmap(name, "cache")
    retrieval = shipped_headmap(name)
    with contextlib.suppress(HeadwiseError):
        return shipped_headmap(name, "gates").with_ties_broken_by(retrieval)
    return retrieval
