"""Where the decoder blocks, attention and MLP live in each supported model family.

Keyed on ``config.model_type`` (never on path substrings). Two layouts cover the families
transformers ships:

* ``model.model.layers[i].self_attn / .mlp`` — Llama, Mistral, Qwen2/Qwen3, Gemma/Gemma2/Gemma3,
  Phi-3, OLMo/OLMo2/OLMo3, Granite, GLM/GLM-4, …
* ``model.transformer.h[i].attn / .mlp`` — GPT-2.

Each block's forward takes the residual stream as its first input and returns it. Inside the block
the residual is updated twice, ``x ← x + w_attn`` and ``x ← x + w_mlp``. The *write sites* are the
modules whose outputs are those increments ``w``: the attention and MLP modules themselves in
pre-norm families (Llama, GPT-2, …), but the **post-norms** in "sandwich-norm" families
(Gemma2/Gemma3/OLMo2/OLMo3: ``x ← x + post_attention_layernorm(attn(…))``, see
``modeling_gemma2.py`` / ``modeling_olmo2.py``) and in GLM-4 (``x ← x + post_self_attn_layernorm(attn(…))``
and ``x ← x + post_mlp_layernorm(mlp(…))``, ``modeling_glm4.py``; its ``post_attention_layernorm``
is the *pre*-MLP norm, as in Llama). The three-site ablation in :mod:`irr_ray.core.hooks` projects
directions out of the write sites — projecting out of the raw attention output in a post-norm family
would not work, because the norm's per-channel gain re-introduces the direction.

A ``model_type`` not listed here is matched by structure only if a check on the loaded model proves
the layout (:func:`irr_ray.core.hooks.check_write_sites`: each block's output is exactly its input
plus its two write-site outputs, and a direction ablated at the three sites leaves ~0 along it);
otherwise :func:`get_layout` raises :class:`~irr_ray.errors.UnsupportedArchitectureError` naming the
model type and the module paths it tried.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

from torch import nn

from irr_ray.errors import UnsupportedArchitectureError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """Attribute names of one layout: block container paths, attention / MLP, their write sites."""

    block_paths: tuple[str, ...]  # dotted paths tried in order for the ModuleList of blocks
    attn: str
    mlp: str
    attn_write: str  # module whose output is added to the residual after attention
    mlp_write: str  # module whose output is added to the residual after the MLP


# A bare base model (LlamaModel, GPT2Model) holds the blocks directly; a PEFT wrapper nests the
# causal LM under base_model.model; Gemma3ForConditionalGeneration keeps its text tower under
# model.language_model.
_LLAMA_PATHS = ("model.layers", "model.language_model.layers", "layers", "base_model.model.model.layers")
_GPT2_PATHS = ("transformer.h", "h", "base_model.model.transformer.h")

_LLAMA_LIKE = FamilySpec(_LLAMA_PATHS, "self_attn", "mlp", "self_attn", "mlp")
_SANDWICH_NORM = FamilySpec(
    _LLAMA_PATHS, "self_attn", "mlp", "post_attention_layernorm", "post_feedforward_layernorm"
)
# GLM-4 (modeling_glm4.py): post-norms after attention and MLP under their own names.
_GLM4 = FamilySpec(_LLAMA_PATHS, "self_attn", "mlp", "post_self_attn_layernorm", "post_mlp_layernorm")
_GPT2 = FamilySpec(_GPT2_PATHS, "attn", "mlp", "attn", "mlp")

LAYOUTS: dict[str, FamilySpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _SANDWICH_NORM,
    "gemma3_text": _SANDWICH_NORM,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _SANDWICH_NORM,
    "olmo3": _SANDWICH_NORM,
    "granite": _LLAMA_LIKE,
    "glm": _LLAMA_LIKE,
    "glm4": _GLM4,
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
    "olmo3": ("I",),
    "granite": ("I",),
    "glm": ("I",),
    "glm4": ("I",),
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
    attn_write_name: str
    mlp_write_name: str
    blocks_path: str = ""  # dotted path of ``blocks`` from the model it was resolved on

    def describe(self) -> str:
        """``model.layers[i]`` with its attention / MLP and write sites, for messages."""
        names = dict.fromkeys((self.attn_name, self.mlp_name, self.attn_write_name, self.mlp_write_name))
        return f"{self.blocks_path}[i] with " + ", ".join(f".{n}" for n in names)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def attn(self, i: int) -> nn.Module:
        return getattr(self.blocks[i], self.attn_name)

    def mlp(self, i: int) -> nn.Module:
        return getattr(self.blocks[i], self.mlp_name)

    def attn_write(self, i: int) -> nn.Module:
        """Module whose output is added to the residual stream after attention in block ``i``."""
        return getattr(self.blocks[i], self.attn_write_name)

    def mlp_write(self, i: int) -> nn.Module:
        """Module whose output is added to the residual stream after the MLP in block ``i``."""
        return getattr(self.blocks[i], self.mlp_write_name)


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    mt = getattr(config, "model_type", None)
    if mt == "gemma3":  # multimodal wrapper config; the text tower is what we hook
        text_cfg = getattr(config, "text_config", None)
        mt = getattr(text_cfg, "model_type", mt)
    return str(mt)


def _match(model: nn.Module, mt: str, spec: FamilySpec) -> Layout | None:
    for path in spec.block_paths:
        blocks = _get_attr_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            first = blocks[0]
            if all(isinstance(getattr(first, name, None), nn.Module)
                   for name in (spec.attn, spec.mlp, spec.attn_write, spec.mlp_write)):
                return Layout(mt, blocks, spec.attn, spec.mlp, spec.attn_write, spec.mlp_write, path)
    return None


# Structural candidates for an unregistered model_type, most specific first (a block with
# post-norms also has the plain .self_attn / .mlp a Llama-like match would pick).
_STRUCTURAL = (_SANDWICH_NORM, _GLM4, _LLAMA_LIKE, _GPT2)

# model → (model_type, verified Layout or the failure message): the check runs a forward pass,
# so it runs once per model instance, not at every hook context.
_VERIFIED: weakref.WeakKeyDictionary[nn.Module, tuple[str, Layout | str]] = weakref.WeakKeyDictionary()


def get_layout(model: nn.Module) -> Layout:
    """Return the decoder-block layout of ``model`` or raise a clear error naming what was looked for.

    A known ``model_type`` uses its registered layout only. An unknown one is matched structurally —
    sandwich-norm first (a block with ``post_feedforward_layernorm``), then GLM-4 style post-norms,
    then Llama-like, then GPT-2 — and a match is used only once
    :func:`irr_ray.core.hooks.check_write_sites` has verified it on ``model`` (one tiny forward
    pass per check, once per model instance).
    """
    mt = model_type_of(model)
    if mt in LAYOUTS:
        layout = _match(model, mt, LAYOUTS[mt])
        if layout is not None:
            return layout
        raise _unsupported(model, mt, f"looked for decoder blocks at {_describe(LAYOUTS[mt])}")
    cached = _VERIFIED.get(model)
    if cached is None or cached[0] != mt:
        cached = (mt, _verify_structural(model, mt))
        _VERIFIED[model] = cached
    if isinstance(cached[1], Layout):
        return cached[1]
    raise _unsupported(model, mt, cached[1])


def _verify_structural(model: nn.Module, mt: str) -> Layout | str:
    """The first structural match that passes the write-site check, else why none did."""
    from irr_ray.core.hooks import check_write_sites  # hooks imports this module

    failures = []
    for spec in _STRUCTURAL:
        layout = _match(model, mt, spec)
        if layout is None:
            continue
        problem = check_write_sites(model, layout)
        if problem is None:
            log.warning("model_type %r is not a registered family: using %s, matched by structure and "
                        "verified on the loaded model", mt, layout.describe())
            return layout
        failures.append(f"{layout.describe()} matches by structure but fails the write-site check ({problem})")
    if failures:
        return "; ".join(failures) + " — ablating there would leave the directions in the residual stream"
    return "looked for decoder blocks at " + " or ".join(_describe(s) for s in (_LLAMA_LIKE, _GPT2))


def _unsupported(model: nn.Module, mt: str, what: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"unsupported architecture {type(model).__name__} (model_type={mt!r}): {what}; "
        f"supported model_types: {', '.join(sorted(LAYOUTS))} "
        "(a new family needs an entry in irr_ray.models.families.LAYOUTS)"
    )


def _describe(spec: FamilySpec) -> str:
    names = dict.fromkeys((spec.attn, spec.mlp, spec.attn_write, spec.mlp_write))
    return " / ".join(f"{p}[i]" for p in spec.block_paths) + " with " + ", ".join(f".{n}" for n in names)


def refusal_tokens_for(model_type: str) -> tuple[str, ...]:
    """Refusal-token strings for a family ("I" by default, as Arditi et al. use for Llama-3)."""
    return REFUSAL_TOKENS.get(model_type, ("I",))
