"""Matching penalties between harmful and harmless representations, and the KD term.

Notation: ``h`` holds pooled hidden states ``[..., B, H]`` (any leading dims, e.g. layers),
``labels`` is ``[B]`` with 1 = harmful (class p) and 0 = harmless (class n). With ``X_c`` the
class-``c`` rows centred on their class mean ``μ_c`` and ``n_c`` their count:

* mean penalty   ``Δμ = μ_p − μ_n``;  L1 = ``mean_j |Δμ_j|``,  L2 = ``mean_j Δμ_j²``.
* cov penalty    ``C_c = X_cᵀ X_c / (n_c − 1)`` (unbiased), ``ΔC = C_p − C_n``;
  L1 = ``Σ|ΔC| / H²``,  L2 = ``‖ΔC‖²_F / H²``. Dividing by ``H²`` keeps ``λ_cov`` on the scale of
  ``λ_mean`` across hidden sizes.
* KD             ``T² · KL(p_teacher ‖ p_student)`` with ``p = softmax(logits / T)``.

The L2 covariance penalty never needs the ``H × H`` matrices. By ``‖AᵀA‖_F = ‖AAᵀ‖_F`` and
``tr(C_p C_n) = ‖X_p X_nᵀ‖²_F / ((n_p−1)(n_n−1))``,

    ‖ΔC‖²_F = ‖X_p X_pᵀ‖²_F/(n_p−1)² + ‖X_n X_nᵀ‖²_F/(n_n−1)² − 2‖X_p X_nᵀ‖²_F/((n_p−1)(n_n−1)),

which costs ``O(B²H)`` instead of ``O(BH²)`` (computed as ``cᵀ(G∘G)c`` with one ``B × B`` Gram
matrix ``G = X Xᵀ`` of the class-centred rows and ``c = ±1/(n_c − 1)``). The three terms are large and nearly cancel exactly
where training drives the penalty (matched covariances): in float32 the value loses every digit
there. The Gram path therefore runs in float64 — cheap at ``n × n`` — and its value and gradient
are then more accurate than the direct float32 form (see ``tests/core/test_losses.py``).

A penalty needs both classes in the batch (mean: ≥ 1 sample each, cov: ≥ 2 each). Otherwise it
is *degenerate*: the value is an exact zero without a graph and ``PenaltyResult.degenerate`` is
set, so the trainer can count and warn instead of silently training on nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

PenaltyKind = Literal["l1", "l2"]
CovMethod = Literal["auto", "gram", "direct"]
MatchKind = Literal["mean", "cov"]

__all__ = [
    "CovMethod",
    "MatchKind",
    "PenaltyKind",
    "PenaltyResult",
    "cov_penalty",
    "gram_is_cheaper",
    "kd_loss",
    "layer_penalty",
    "mean_penalty",
]


@dataclass(frozen=True)
class PenaltyResult:
    """A matching penalty and whether the batch could define it.

    ``value``: the penalty, shape ``[...]`` (the leading dims of ``h``; a scalar for ``[B, H]``
    input, or after :func:`layer_penalty`). Float32 for half/float32 input, float64 for float64.
    ``degenerate``: a class had too few samples; ``value`` is then an exact zero with no graph.
    ``n_pos`` / ``n_neg``: harmful / harmless sample counts in the batch.
    ``per_layer``: :func:`layer_penalty` only — the detached per-block values ``[L]``.
    """

    value: Tensor
    degenerate: bool
    n_pos: int
    n_neg: int
    per_layer: Tensor | None = None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of half-precision activations are taken in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _class_masks(labels: Tensor, batch: int, device: torch.device) -> tuple[Tensor, int, int]:
    """Validate ``labels [B]`` (bool or int, 1 = harmful); return (harmful mask on ``device``, n_pos, n_neg)."""
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must have shape [{batch}] to match h, got {list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise ValueError(f"labels must be a bool or integer tensor (1 = harmful), got {labels.dtype}")
    pos = labels != 0
    if labels.dtype != torch.bool and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must contain only 0 (harmless) and 1 (harmful)")
    n_pos = int(pos.sum())
    return pos.to(device), n_pos, batch - n_pos


def _check_h(h: Tensor) -> None:
    if h.ndim < 2:
        raise ValueError(f"h must have shape [..., B, H], got {list(h.shape)}")
    if not h.dtype.is_floating_point:
        raise ValueError(f"h must be a floating-point tensor, got {h.dtype}")


def _check_kind(kind: str) -> None:
    if kind not in ("l1", "l2"):
        raise ValueError(f"penalty kind must be 'l1' or 'l2', got {kind!r}")


def _zero(h: Tensor) -> Tensor:
    return torch.zeros(h.shape[:-2], dtype=_compute_dtype(h.dtype), device=h.device)


def mean_penalty(h: Tensor, labels: Tensor, kind: PenaltyKind = "l2") -> PenaltyResult:
    """Class-conditional mean penalty over the last two dims of ``h [..., B, H]``.

    L1 = ``mean_j |μ_p − μ_n|_j``, L2 = ``mean_j (μ_p − μ_n)_j²``; value shape ``[...]``.
    Degenerate (exact zero, flagged) when either class is absent.
    """
    _check_h(h)
    _check_kind(kind)
    pos, n_pos, n_neg = _class_masks(labels, h.shape[-2], h.device)
    if n_pos < 1 or n_neg < 1:
        return PenaltyResult(_zero(h), True, n_pos, n_neg)
    x = h.to(_compute_dtype(h.dtype))
    delta = x[..., pos, :].mean(dim=-2) - x[..., ~pos, :].mean(dim=-2)  # [..., H]
    value = delta.abs().mean(dim=-1) if kind == "l1" else delta.square().mean(dim=-1)
    return PenaltyResult(value, False, n_pos, n_neg)


def gram_is_cheaper(n_pos: int, n_neg: int, hidden: int) -> bool:
    """Whether the Gram form (``B²H`` multiply-adds per product) beats the direct one (``BH²``): ``B < H``."""
    return n_pos + n_neg < hidden


def _centred(x: Tensor, rows: Tensor) -> Tensor:
    sub = x[..., rows, :]
    return sub - sub.mean(dim=-2, keepdim=True)


def _cov_direct(x: Tensor, pos: Tensor, n_pos: int, n_neg: int, kind: PenaltyKind) -> Tensor:
    """Reference form: build ``C_p, C_n`` (``[..., H, H]``) and compare them entrywise."""
    xp, xn = _centred(x, pos), _centred(x, ~pos)
    delta = xp.mT @ xp / (n_pos - 1) - xn.mT @ xn / (n_neg - 1)
    hidden = x.shape[-1]
    flat = delta.flatten(-2)
    norm = flat.abs().sum(dim=-1) if kind == "l1" else flat.square().sum(dim=-1)
    return norm / hidden**2


def _cov_gram_l2(x: Tensor, pos: Tensor, n_pos: int, n_neg: int) -> Tensor:
    """``‖ΔC‖²_F / H²`` as ``cᵀ (G ∘ G) c / H²`` with one ``B × B`` Gram matrix, in float64.

    Rows are centred on their own class mean, ``G = X Xᵀ`` and ``c_i = +1/(n_p−1)`` (harmful) or
    ``−1/(n_n−1)`` (harmless), because ``ΔC = Xᵀ diag(c) X``; the ``pp``, ``nn`` and ``pn`` blocks
    of ``G`` are the three Gram norms of the module docstring. Centring, product and the final
    cancellation run in float64 (``B × H`` cast, ``B²H`` products: cheap next to ``H × H``); the
    result is cast back to the caller's compute dtype, so the gradient reaches ``h`` in its dtype.
    """
    out_dtype = x.dtype
    x64 = x.to(torch.float64)
    is_pos = pos.to(torch.float64)
    mean_pos = torch.einsum("b,...bh->...h", is_pos, x64) / n_pos
    mean_neg = torch.einsum("b,...bh->...h", 1.0 - is_pos, x64) / n_neg
    centred = x64 - torch.where(pos.unsqueeze(-1), mean_pos.unsqueeze(-2), mean_neg.unsqueeze(-2))
    gram = centred @ centred.mT  # [..., B, B]
    c = is_pos / (n_pos - 1) - (1.0 - is_pos) / (n_neg - 1)
    frob2 = torch.einsum("i,...ij,j->...", c, gram.square(), c)
    hidden = x.shape[-1]
    return (frob2 / hidden**2).to(out_dtype)


def cov_penalty(
    h: Tensor, labels: Tensor, kind: PenaltyKind = "l2", method: CovMethod = "auto"
) -> PenaltyResult:
    """Class-conditional covariance penalty over the last two dims of ``h [..., B, H]``.

    Unbiased ``C_c = X_cᵀX_c/(n_c−1)``; L1 = ``Σ|C_p − C_n| / H²``, L2 = ``‖C_p − C_n‖²_F / H²``.
    ``method``: ``"direct"`` forms the ``H × H`` matrices (the reference, and the only form for
    L1); ``"gram"`` uses the exact ``n × n`` expansion in float64 (L2 only); ``"auto"`` picks the
    Gram form for L2 whenever it needs fewer multiply-adds (:func:`gram_is_cheaper`).
    Degenerate (exact zero, flagged) when a class has fewer than 2 samples.
    """
    _check_h(h)
    _check_kind(kind)
    if method not in ("auto", "gram", "direct"):
        raise ValueError(f"cov method must be 'auto', 'gram' or 'direct', got {method!r}")
    if method == "gram" and kind == "l1":
        raise ValueError("the Gram form exists only for the L2 covariance penalty; use method='direct'")
    pos, n_pos, n_neg = _class_masks(labels, h.shape[-2], h.device)
    if n_pos < 2 or n_neg < 2:
        return PenaltyResult(_zero(h), True, n_pos, n_neg)
    x = h.to(_compute_dtype(h.dtype))
    use_gram = kind == "l2" and (
        method == "gram" or (method == "auto" and gram_is_cheaper(n_pos, n_neg, h.shape[-1]))
    )
    value = _cov_gram_l2(x, pos, n_pos, n_neg) if use_gram else _cov_direct(x, pos, n_pos, n_neg, kind)
    return PenaltyResult(value, False, n_pos, n_neg)


def layer_penalty(
    hidden_states_pooled: Sequence[Tensor] | Tensor,
    labels: Tensor,
    match: MatchKind,
    kind: PenaltyKind,
    multi_layer: bool,
    cov_method: CovMethod = "auto",
) -> PenaltyResult:
    """Matching penalty aggregated over transformer blocks.

    ``hidden_states_pooled``: pooled states per layer as Hugging Face orders ``hidden_states``
    (``L + 1`` tensors ``[B, H]``, or one ``[L + 1, B, H]``); index 0, the embedding output, is
    skipped because it is a lookup table the penalty must not flatten. ``multi_layer=True``
    averages the block penalties ``1..L``; ``False`` uses the last block only.
    """
    if match not in ("mean", "cov"):
        raise ValueError(f"match must be 'mean' or 'cov', got {match!r}")
    stacked = (
        hidden_states_pooled
        if isinstance(hidden_states_pooled, Tensor)
        else torch.stack(list(hidden_states_pooled))
    )
    if stacked.ndim != 3 or stacked.shape[0] < 2:
        raise ValueError(
            "hidden_states_pooled must hold the embedding output plus >= 1 block output, each [B, H]; "
            f"got shape {list(stacked.shape)}"
        )
    blocks = stacked[1:] if multi_layer else stacked[-1:]
    if match == "mean":
        res = mean_penalty(blocks, labels, kind)
    else:
        res = cov_penalty(blocks, labels, kind, cov_method)
    return PenaltyResult(res.value.mean(), res.degenerate, res.n_pos, res.n_neg, res.value.detach())


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · KL(p_t ‖ p_s)``, ``p = softmax(logits / T)``, summed over ``V`` and averaged over ``B``.

    Both inputs are ``[B, V]`` (next-token logits at the last prompt position); the teacher is
    detached. The ``T²`` factor keeps gradient magnitudes independent of ``T`` (Hinton et al. 2015).
    Computed in float32 (float64 stays float64); returns a scalar.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "kd_loss expects student and teacher logits of the same shape [B, V], got "
            f"{list(student_logits.shape)} and {list(teacher_logits.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    dtype = _compute_dtype(student_logits.dtype)
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2
