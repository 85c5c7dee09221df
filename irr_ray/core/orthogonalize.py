"""Weight orthogonalisation ("abliteration"): refusal directions edited out of a model's weights.

**Exact variant** (Arditi et al. 2024, "Refusal in language models is mediated by a single
direction", §4 "weight orthogonalization"; public code: ``andyrdt/refusal_direction``,
``pipeline/utils/utils.py::get_orthogonalized_matrix`` applied to ``embed_tokens``,
``self_attn.o_proj`` and ``mlp.down_proj``). With orthonormal rows Q [K, D], every matrix that
writes into the residual stream is replaced by

    W_out ← (I − α·QᵀQ)·W_out            (α = ``scale``; α = 1 removes span(Q) entirely)

on its residual (output) axis, and so is every bias on it, b ← b − α·QᵀQ·b. The writers are the
token embeddings (and GPT-2's position embeddings ``wpe``), the attention output projection and the
MLP output projection of every block — ``nn.Linear`` [D, in] (Llama, Qwen2, Mistral, Phi-3, …:
``self_attn.o_proj`` / ``mlp.down_proj``; projected on the left) or GPT-2's ``Conv1D`` [in, D]
(``attn.c_proj`` / ``mlp.c_proj``; projected on the right, W ← W·(I − QᵀQ)). In a pre-norm family
every residual increment, and x_0, then lies in span(Q)^⊥, so with α = 1 the edited model computes
exactly what the three-site hook ablation (:func:`irr_ray.core.hooks.ablate_directions`) computes.

**Norm-preserving variant** ("magnitude-preserving orthogonal ablation", Jim Lai (grimjim),
https://huggingface.co/blog/grimjim/norm-preserving-biprojected-abliteration and
``jim-plus/llm-abliteration``; as implemented by heretic, ``p-e-w/heretic``,
``row_normalization = "full"``). Each writer, viewed as W [D, in] (rows = residual coordinates),
is decomposed into row magnitudes m_i = ‖W_i,:‖ (the norm along the input dimension) and unit rows
Ŵ; the directions are ablated from Ŵ, the rows renormalised, and the magnitudes put back:

    W ← diag(m) · rownorm(Ŵ − α·QᵀQ·Ŵ).

The per-row rescaling brings back a (small) component along Q, so this variant is an
approximation of the ablation by construction, chosen by its authors for lower KL on harmless
prompts. Its directions are usually *harmless-projected* first ("projected abliteration",
https://huggingface.co/blog/grimjim/projected-abliteration; heretic's ``orthogonalize_direction``):
r ← r − (r·μ̂)·μ̂ with μ̂ the unit harmless mean residual, then renormalised
(:func:`project_against_harmless`).

**Tied embeddings.** When the output embedding is the input embedding (``tie_word_embeddings``),
editing the embedding would also edit the unembedding, which the hook ablation leaves alone. The
edit therefore *unties* them: :attr:`WeightEdit.untied` holds the output embedding's new,
separate value (the ORIGINAL embeddings), and a saved checkpoint needs
``tie_word_embeddings = False`` (:meth:`WeightEdit.config_updates`).

**Post-norm families** (Gemma2/Gemma3/OLMo2/OLMo3 "sandwich norms", GLM-4; see
:mod:`irr_ray.models.families`): a block writes ``post_norm(proj(…))`` into the residual, and the
norm's per-channel gain g re-introduces the direction (g ⊙ x/rms(x) is not ⊥ r although x is), so
no weight edit reproduces the three-site ablation. Editing the projection before the post-norm —
what abliteration tools do — is offered only as an explicit approximation (``approximate=True``);
the default refuses in one line.

Pure torch, no I/O: the functions return new tensors and never modify the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from irr_ray.core.directions import orthonormalize
from irr_ray.errors import UnsupportedArchitectureError
from irr_ray.models.families import Layout, get_layout

__all__ = [
    "ResidualWriter",
    "Variant",
    "WeightEdit",
    "check_orthogonalizable",
    "is_post_norm",
    "orthogonalize_weights",
    "post_norm_error",
    "project_against_harmless",
    "residual_writers",
]

Variant = Literal["exact", "norm_preserving"]

# Output projections of attention / MLP modules, by child name, in the order tried.
_ATTN_OUT = ("o_proj", "c_proj", "out_proj", "dense", "wo")
_MLP_OUT = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2", "wo")
_ORTHONORMAL_ATOL = 1e-3


@dataclass(frozen=True)
class ResidualWriter:
    """One parameter that writes into the residual stream: its ``named_parameters`` name, the axis
    of size D (the residual axis) and what it is (embedding, linear, conv1d, bias)."""

    name: str
    axis: int
    kind: Literal["embedding", "linear", "conv1d", "bias"]


@dataclass(frozen=True)
class WeightEdit:
    """The edited parameters: ``replacements`` (parameter name → new value, for
    :func:`irr_ray.attack.suite.base.patched_parameters` or a saved state dict) and ``untied``
    (output-embedding parameter name → its new, *separate* value = the original embeddings, when
    the model ties them to the edited input embeddings; empty otherwise). ``approximate`` is True
    when the model's post-norms make the edit an approximation of the hook ablation."""

    replacements: dict[str, torch.Tensor]
    untied: dict[str, torch.Tensor] = field(default_factory=dict)
    variant: Variant = "exact"
    approximate: bool = False
    model_type: str = ""

    def config_updates(self) -> dict[str, Any]:
        """What a saved checkpoint's config must change: ``tie_word_embeddings = False`` if untied."""
        return {"tie_word_embeddings": False} if self.untied else {}


def is_post_norm(layout: Layout) -> bool:
    """True when a block's write sites are post-norms, not the attention / MLP modules themselves."""
    return layout.attn_write_name != layout.attn_name or layout.mlp_write_name != layout.mlp_name


def check_orthogonalizable(layout: Layout, approximate: bool = False) -> None:
    """Raise :func:`post_norm_error` for a post-norm family unless the approximation was asked for."""
    if is_post_norm(layout) and not approximate:
        raise post_norm_error(layout.model_type, layout.attn_write_name, layout.mlp_write_name)


def post_norm_error(model_type: str, attn_write: str, mlp_write: str) -> UnsupportedArchitectureError:
    """The one-line refusal for a post-norm family (module docstring)."""
    return UnsupportedArchitectureError(
        f"weight orthogonalisation cannot reproduce the directional ablation for model_type {model_type!r}: "
        f"its blocks write {attn_write} / {mlp_write} (post-norms) into the residual stream and their "
        "per-channel gains re-introduce the direction; ask for the approximation explicitly "
        "(approximate=True, `irr-ray abliterate --approximate`) to edit the projections before the "
        "post-norms, as abliteration tools do")


def _names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules(remove_duplicate=False)}


def _output_projection(module: nn.Module, candidates: Sequence[str], width: int) -> nn.Module | None:
    for name in candidates:
        child = getattr(module, name, None)
        if isinstance(child, nn.Linear) and child.out_features == width:
            return child
        if isinstance(child, Conv1D) and child.nf == width:
            return child
    return None


def residual_writers(model: nn.Module, layout: Layout | None = None) -> list[ResidualWriter]:
    """Every parameter whose values are added to the residual stream (module docstring): the
    embeddings of width D outside the blocks, and each block's attention / MLP output projection
    with its bias. A block whose projection is not found raises
    :class:`~irr_ray.errors.UnsupportedArchitectureError` naming the module and the names tried."""
    layout = layout or get_layout(model)
    width = int(model.get_input_embeddings().weight.shape[-1])
    names = _names(model)
    in_blocks = {id(m) for m in layout.blocks.modules()}
    writers = [ResidualWriter(f"{names[id(m)]}.weight", 1, "embedding") for m in model.modules()
               if isinstance(m, nn.Embedding) and id(m) not in in_blocks and m.weight.shape[-1] == width]
    for i in range(layout.num_layers):
        for module, candidates in ((layout.attn(i), _ATTN_OUT), (layout.mlp(i), _MLP_OUT)):
            proj = _output_projection(module, candidates, width)
            if proj is None:
                raise UnsupportedArchitectureError(
                    f"no output projection of width {width} found in {names[id(module)]} "
                    f"({type(module).__name__}; looked for {', '.join(candidates)}): cannot orthogonalise "
                    f"the weights of model_type {layout.model_type!r}")
            prefix = names[id(proj)]
            if isinstance(proj, Conv1D):
                writers.append(ResidualWriter(f"{prefix}.weight", 1, "conv1d"))
            else:
                writers.append(ResidualWriter(f"{prefix}.weight", 0, "linear"))
            if getattr(proj, "bias", None) is not None:
                writers.append(ResidualWriter(f"{prefix}.bias", 0, "bias"))
    return writers


def _check_directions(directions: torch.Tensor, width: int) -> torch.Tensor:
    if directions.dim() != 2 or directions.shape[1] != width:
        raise ValueError(f"directions must be [K, {width}] (the model's hidden size), got {tuple(directions.shape)}")
    q = directions.detach().to(torch.float64)
    err = float((q @ q.T - torch.eye(q.shape[0], dtype=q.dtype, device=q.device)).abs().max()) if len(q) else 0.0
    if err > _ORTHONORMAL_ATOL:
        raise ValueError(f"directions must have orthonormal rows: max |Q·Qᵀ − I| = {err:.3g}; "
                         "orthonormalise them with irr_ray.core.orthonormalize")
    return q


def _exact(w: torch.Tensor, q: torch.Tensor, axis: int, scale: float) -> torch.Tensor:
    """(I − α·QᵀQ) applied on ``axis`` of w (the residual axis)."""
    m = w.movedim(axis, -1)
    return (m - scale * (m @ q.T) @ q).movedim(-1, axis)


def _norm_preserving(w: torch.Tensor, q: torch.Tensor, axis: int, scale: float) -> torch.Tensor:
    """diag(m)·rownorm(Ŵ − α·QᵀQ·Ŵ) with W viewed as [D, in] (rows on the residual axis)."""
    if w.dim() == 1:  # a bias: a single vector in the residual space, projected as is
        return _exact(w, q, 0, scale)
    rows = w.movedim(axis, 0)
    shape = rows.shape
    flat = rows.reshape(shape[0], -1)
    magnitudes = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    unit = F.normalize(flat, dim=1)
    ablated = unit - scale * q.T @ (q @ unit)
    return (F.normalize(ablated, dim=1) * magnitudes).reshape(shape).movedim(0, axis)


@torch.no_grad()
def orthogonalize_weights(
    model: nn.Module,
    directions: torch.Tensor,
    variant: Variant = "exact",
    scale: float = 1.0,
    approximate: bool = False,
) -> WeightEdit:
    """The replacement parameters that orthogonalise every residual writer of ``model`` against the
    orthonormal rows ``directions`` [K, D] (module docstring for both variants).

    Computed in float32 (float64 for float64 weights), one parameter at a time, and returned in
    each parameter's dtype and device; the model is not modified. A post-norm family raises
    :class:`~irr_ray.errors.UnsupportedArchitectureError` unless ``approximate`` (then its pre-norm
    projections are edited and the result is *not* the hook ablation). With tied input / output
    embeddings, :attr:`WeightEdit.untied` carries the output embedding's original values.
    """
    if variant not in ("exact", "norm_preserving"):
        raise ValueError(f"variant must be 'exact' or 'norm_preserving', got {variant!r}")
    layout = get_layout(model)
    check_orthogonalizable(layout, approximate)
    width = int(model.get_input_embeddings().weight.shape[-1])
    q = _check_directions(directions, width)
    params = dict(model.named_parameters(remove_duplicate=False))
    edit = _exact if variant == "exact" else _norm_preserving
    replacements: dict[str, torch.Tensor] = {}
    for writer in residual_writers(model, layout):
        p = params[writer.name]
        work = torch.float64 if p.dtype == torch.float64 else torch.float32
        new = edit(p.detach().to(work), q.to(device=p.device, dtype=work), writer.axis, float(scale))
        replacements[writer.name] = new.to(dtype=p.dtype)
    untied: dict[str, torch.Tensor] = {}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is inp.weight:
        untied[f"{_names(model)[id(out)]}.weight"] = inp.weight.detach().clone()
    return WeightEdit(replacements, untied, variant, approximate=is_post_norm(layout), model_type=layout.model_type)


def project_against_harmless(directions: torch.Tensor, harmless_means: torch.Tensor) -> torch.Tensor:
    """"Projected abliteration" (grimjim; heretic's ``orthogonalize_direction``): each direction
    minus its component along the unit harmless mean, r ← r − (r·μ̂)·μ̂, renormalised; the rows are
    then orthonormalised in order (QR, :func:`irr_ray.core.orthonormalize`; a row that becomes
    dependent is dropped).

    Args:
        directions: [K, D] refusal directions (any norm).
        harmless_means: [K, D] (one harmless mean per direction, e.g. at its layer) or [D].

    Returns:
        [K', D] float32 orthonormal rows, K' ≤ K. The first is orthogonal to its μ̂; a later one
        keeps that only up to the Gram–Schmidt step (exactly when all means are the same).
    """
    if directions.dim() != 2:
        raise ValueError(f"directions must be [K, D], got {tuple(directions.shape)}")
    r = F.normalize(directions.detach().to(torch.float64), dim=1)
    mu = harmless_means.detach().to(dtype=torch.float64, device=r.device)
    mu = F.normalize(mu.expand_as(r) if mu.dim() == 1 else mu, dim=-1)
    if mu.shape != r.shape:
        raise ValueError(f"harmless_means must be [D] or [K, D] = {tuple(r.shape)}, got {tuple(harmless_means.shape)}")
    r = r - (r * mu).sum(dim=1, keepdim=True) * mu
    return orthonormalize(r, on_rank_deficiency="drop").float()
