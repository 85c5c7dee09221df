"""Candidate refusal directions: difference of means, QR orthonormalisation, safetensors I/O.

Arditi et al. (2024) take the refusal direction at layer l and position p to be the difference of
class means of the residual stream,

    r[l, p] = μ_harmful[l, p] − μ_harmless[l, p],      μ_c[l, p] = (1/N_c) Σ_i x_i[l, p].

Ablating a set of K directions with rows ``D`` [K, D] applies x ↦ x − (x·Dᵀ)·D = x·(I − DᵀD). That
map is the orthogonal projector onto the complement of span(D) — idempotent, symmetric — only when
the rows of D are orthonormal. The iterated attack stacks raw difference-of-means vectors that are
*not* orthogonal to the ones already chosen, so the stack is QR-orthonormalised before every
ablation (otherwise the second direction partially undoes the first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from irr_ray.errors import DataValidationError, IrrRayError
from irr_ray.utils.files import atomic_path

DIRECTIONS_KEY = "directions"

__all__ = [
    "DIRECTIONS_KEY",
    "RunningMean",
    "diff_of_means",
    "load_directions",
    "orthonormalize",
    "project_out",
    "projector",
    "save_directions",
]


def diff_of_means(acts_harmful: torch.Tensor, acts_harmless: torch.Tensor) -> torch.Tensor:
    """Difference of class means per (layer, position): ``r = mean_N(harmful) − mean_M(harmless)``.

    Args:
        acts_harmful: [L, P, N, D] residual activations of N harmful prompts.
        acts_harmless: [L, P, M, D] the same layers / positions for M harmless prompts.

    Returns:
        [L, P, D] in float32 (float64 if an input is float64). The means are accumulated in float64:
        the two means are close, so their difference would lose digits in bf16/fp16.
    """
    if acts_harmful.dim() != 4 or acts_harmless.dim() != 4:
        raise ValueError(
            f"diff_of_means expects [L, P, N, D] tensors, got {tuple(acts_harmful.shape)} "
            f"and {tuple(acts_harmless.shape)}"
        )
    lh, ph, nh, dh = acts_harmful.shape
    ll, pl, nl, dl = acts_harmless.shape
    if (lh, ph, dh) != (ll, pl, dl):
        raise ValueError(
            f"diff_of_means: layer/position/hidden dims differ: harmful {tuple(acts_harmful.shape)} "
            f"vs harmless {tuple(acts_harmless.shape)}"
        )
    if nh < 1 or nl < 1:
        raise ValueError(f"diff_of_means needs ≥ 1 sample per class, got N={nh} harmful, M={nl} harmless")
    out_dtype = torch.float64 if torch.float64 in (acts_harmful.dtype, acts_harmless.dtype) else torch.float32
    diff = acts_harmful.to(torch.float64).mean(dim=2) - acts_harmless.to(torch.float64).mean(dim=2)
    return diff.to(out_dtype)


class RunningMean:
    """Streaming float64 mean of [L, P, n, D] activation batches over the sample axis (dim 2).

    ``update`` adds Σ_i x_i and n; ``mean`` is Σ/n, [L, P, D]. Lets the attack average activations
    of many prompt batches without keeping them, with the same accuracy as :func:`diff_of_means`.
    """

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self.count = 0

    def update(self, acts: torch.Tensor) -> None:
        if acts.dim() != 4:
            raise ValueError(f"RunningMean.update expects [L, P, n, D], got {tuple(acts.shape)}")
        batch_sum = acts.to(torch.float64).sum(dim=2)
        if self._sum is None:
            self._sum = batch_sum
        elif self._sum.shape != batch_sum.shape:
            raise ValueError(
                f"RunningMean.update: batch has [L, P, D] = {tuple(batch_sum.shape)}, "
                f"earlier batches {tuple(self._sum.shape)}"
            )
        else:
            self._sum = self._sum + batch_sum.to(self._sum.device)
        self.count += acts.shape[2]

    @property
    def mean(self) -> torch.Tensor:
        """[L, P, D] float64 mean of everything seen so far."""
        if self._sum is None or self.count == 0:
            raise ValueError("RunningMean.mean: no samples seen yet")
        return self._sum / self.count


def orthonormalize(
    stack: torch.Tensor,
    on_rank_deficiency: Literal["raise", "drop"] = "raise",
    rtol: float = 1e-5,
) -> torch.Tensor:
    """Orthonormalise the rows of ``stack`` [K, D] by QR, keeping order and sign.

    With A = stackᵀ [D, K] and A = Q·R (reduced QR, in float64), row i of the result is
    sign(R_ii)·Q[:, i]: the span of the first i rows equals that of the first i raw vectors
    (Gram–Schmidt order), and each row has a positive dot product with its raw vector
    (Q[:, i]·a_i = R_ii), so a direction never flips sign when the stack is re-orthonormalised.

    A raw vector is *dependent* when its component outside the span of the earlier kept vectors is
    tiny, |R_ii| ≤ rtol·‖a_i‖ (this includes zero vectors). ``on_rank_deficiency="raise"`` raises a
    ValueError naming the row; ``"drop"`` removes such rows (QR is redone without them, since a
    dependent column's Q vector is arbitrary and later columns may lean on it) and returns fewer rows.

    Returns:
        [K', D] with orthonormal rows, in the input's floating dtype (K' = K unless rows were dropped).
    """
    if stack.dim() != 2:
        raise ValueError(f"orthonormalize expects [K, D], got shape {tuple(stack.shape)}")
    if on_rank_deficiency not in ("raise", "drop"):
        raise ValueError(f"on_rank_deficiency must be 'raise' or 'drop', got {on_rank_deficiency!r}")
    out_dtype = stack.dtype if stack.is_floating_point() else torch.float32
    a = stack.to(torch.float64)
    keep = list(range(a.shape[0]))
    while keep:
        q, r = torch.linalg.qr(a[keep].T, mode="reduced")  # q [D, m], r [m, K'], m = min(D, K')
        diag = torch.diagonal(r)
        norms = a[keep].norm(dim=1)
        # Rows beyond the hidden size D are dependent on the first D by counting.
        dependent = torch.ones(len(keep), dtype=torch.bool)
        dependent[: diag.shape[0]] = (diag.abs() <= rtol * norms[: diag.shape[0]]) | (norms[: diag.shape[0]] == 0)
        if not bool(dependent.any()):
            return (q * torch.sign(diag)).T.contiguous().to(out_dtype)
        first = int(torch.nonzero(dependent)[0])
        if on_rank_deficiency == "raise":
            residual = float(diag[first].abs()) if first < diag.shape[0] else 0.0
            raise ValueError(
                f"orthonormalize: row {keep[first]} of the [{a.shape[0]}, {a.shape[1]}] stack is linearly "
                f"dependent on the rows before it (|R_ii| = {residual:.3g} ≤ {rtol:g}·‖a_i‖ = "
                f"{float(rtol * norms[first]):.3g}); pass on_rank_deficiency='drop' to skip it"
            )
        del keep[first]
    return a.new_zeros((0, a.shape[1]), dtype=out_dtype)


def projector(directions: torch.Tensor) -> torch.Tensor:
    """The ablation projector P = I − DᵀD [D, D] for orthonormal rows ``directions`` [K, D].

    x·P = x − (x·Dᵀ)·D removes span(D). For orthonormal rows P is symmetric and idempotent (P² = P)
    and D·P = 0. Computed in the directions' dtype.
    """
    if directions.dim() != 2:
        raise ValueError(f"projector expects [K, D], got shape {tuple(directions.shape)}")
    eye = torch.eye(directions.shape[1], dtype=directions.dtype, device=directions.device)
    return eye - directions.T @ directions


def project_out(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """x − (x·Dᵀ)·D for ``x`` [..., D] and orthonormal ``directions`` [K, D] (same dtype/device).

    Costs O(K·D) per vector instead of the O(D²) of multiplying by :func:`projector`.
    """
    return x - (x @ directions.T) @ directions


def save_directions(path: str | Path, directions: torch.Tensor, metadata: dict[str, str]) -> None:
    """Write ``directions`` [K, hidden] as the tensor "directions" of a safetensors file.

    ``metadata`` (string → string, the safetensors header format) travels with the tensor. The file
    is written to a temporary sibling and renamed, so a crash never leaves a half-written file.
    """
    if directions.dim() != 2:
        raise ValueError(f"save_directions expects [K, hidden], got shape {tuple(directions.shape)}")
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ValueError(f"save_directions: metadata must map str to str; non-str entries: {bad}")
    with atomic_path(path) as tmp:
        save_file({DIRECTIONS_KEY: directions.detach().to("cpu").contiguous()}, str(tmp), metadata=metadata)


def load_directions(path: str | Path) -> tuple[torch.Tensor, dict[str, str]]:
    """Read a file written by :func:`save_directions`: ``(directions [K, hidden], metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise IrrRayError(f"directions file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if DIRECTIONS_KEY not in keys:
                raise DataValidationError(
                    f"{path}: no tensor named {DIRECTIONS_KEY!r} (found {keys}); "
                    "write it with irr_ray.core.save_directions"
                )
            tensor = f.get_tensor(DIRECTIONS_KEY)
            metadata = dict(f.metadata() or {})
    except SafetensorError as exc:
        raise DataValidationError(f"{path}: not a readable safetensors file ({exc})") from exc
    if tensor.dim() != 2:
        raise DataValidationError(f"{path}: {DIRECTIONS_KEY!r} must be [K, hidden], got {tuple(tensor.shape)}")
    return tensor, metadata
