"""Where the decoder blocks, attention and MLP live in each supported model family.

Keyed on ``config.model_type`` (never on path substrings). Two layouts cover the families
transformers ships:

* ``model.model.layers[i].self_attn / .mlp`` — Llama, Mistral, Qwen2/Qwen3, Gemma/Gemma2/Gemma3,
  Phi-3, OLMo/OLMo2, Granite, …
* ``model.transformer.h[i].attn / .mlp`` — GPT-2.

Each block's forward takes the residual stream as its first input and returns it (first element
of a tuple, or the tensor itself); attention and MLP outputs are added back to the residual,
which is what the three-site ablation in :mod:`irr_ray.core.hooks` relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from irr_ray.errors import UnsupportedArchitectureError

# model_type -> (path to the ModuleList of blocks, attention attr, mlp attr)
_LLAMA_LIKE = ("model.layers", "self_attn", "mlp")
_GPT2 = ("transformer.h", "attn", "mlp")

LAYOUTS: dict[str, tuple[str, str, str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": _LLAMA_LIKE,
    "gpt2": _GPT2,
}

# Tokens whose first-token probability defines the refusal score, per family (Arditi et al.:
# "I" for Llama-3 / Gemma style refusals "I cannot …", "I'm sorry …").
REFUSAL_TOKENS: dict[str, tuple[str, ...]] = {
    "llama": ("I",),
    "mistral": ("I",),
    "qwen2": ("I", "As"),
    "qwen3": ("I", "As"),
    "gemma": ("I",),
    "gemma2": ("I",),
    "gemma3_text": ("I",),
    "phi3": ("I",),
    "olmo": ("I",),
    "olmo2": ("I",),
    "granite": ("I",),
    "gpt2": ("I",),
}


def _get_attr_path(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


@dataclass(frozen=True)
class Layout:
    """Resolved module locations of one model instance."""

    model_type: str
    blocks: nn.ModuleList
    attn_name: str
    mlp_name: str

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def attn(self, i: int) -> nn.Module:
        return getattr(self.blocks[i], self.attn_name)

    def mlp(self, i: int) -> nn.Module:
        return getattr(self.blocks[i], self.mlp_name)


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    if mt == "gemma3":  # multimodal wrapper config; the text tower is what we hook
        text_cfg = getattr(config, "text_config", None)
        mt = getattr(text_cfg, "model_type", mt)
    return str(mt)


def get_layout(model: nn.Module) -> Layout:
    """Return the decoder-block layout of ``model`` or raise a clear error naming what was looked for."""
    mt = model_type_of(model)
    candidates = [LAYOUTS[mt]] if mt in LAYOUTS else []
    # Unknown model_type: try the two known layouts structurally before giving up.
    candidates += [layout for layout in (_LLAMA_LIKE, _GPT2) if layout not in candidates]
    for blocks_path, attn, mlp in candidates:
        for prefix in ("", "base_model.", "language_model.", "model.language_model."):
            blocks = _get_attr_path(model, prefix + blocks_path)
            if blocks is None and prefix == "model.language_model.":
                blocks = _get_attr_path(model, "model.language_model.layers")
            if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
                first = blocks[0]
                if hasattr(first, attn) and hasattr(first, mlp):
                    return Layout(mt, blocks, attn, mlp)
    raise UnsupportedArchitectureError(
        f"unsupported architecture {type(model).__name__} (model_type={mt!r}): looked for "
        "'model.layers[i].self_attn/.mlp' (Llama, Mistral, Qwen, Gemma, Phi-3, OLMo) and "
        "'transformer.h[i].attn/.mlp' (GPT-2); supported model_types: " + ", ".join(sorted(LAYOUTS))
    )


def refusal_tokens_for(model_type: str) -> tuple[str, ...]:
    """Refusal-token strings for a family ("I" by default, as Arditi et al. use for Llama-3)."""
    return REFUSAL_TOKENS.get(model_type, ("I",))
