"""Load causal LMs and tokenizers from a local directory or a hub id.

``trust_remote_code`` is off unless the caller asks for it; weights are read as safetensors
(``use_safetensors=True``), never unpickled. Hub tokens come only from the environment (``HF_TOKEN``),
which transformers reads itself; irr-ray never logs them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.errors import IrrRayError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` = bf16 on CUDA, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise IrrRayError(f"unknown dtype {name!r}; choose auto, float32, bfloat16 or float16")
    return DTYPES[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_local(path: str) -> None:
    p = Path(path)
    looks_local = path.startswith((".", "/", "~")) or p.exists()
    if looks_local and not (p / "config.json").is_file():
        raise IrrRayError(f"model directory {path} has no config.json (not a Hugging Face model directory)")


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (batched generation) and a pad token."""
    _check_local(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """``AutoModelForCausalLM`` in eval mode on ``device`` (default: CUDA if present, else CPU)."""
    _check_local(path)
    device = device or default_device()
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=resolve_dtype(dtype, device),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    return model.to(device).eval()
