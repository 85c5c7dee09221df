"""Post-hoc linear concept erasure: the bounds that training-time matching is compared against.

* **LEACE** (Belrose et al. 2023), through the ``concept-erasure`` library: the least-squares
  affine edit ``x ↦ x − P(x − μ)`` after which the class-conditional means coincide, so no linear
  classifier beats a constant predictor (their Thm 3.1) — on the data it was fitted to.
* **INLP** (Ravfogel et al. 2020): repeatedly fit a linear classifier, project its direction out
  (``P ← I − W Wᵀ`` with ``W`` the orthonormal basis of every direction found so far), refit on
  the projected data. Each round removes one direction; accuracy falls as the rounds go on but,
  unlike LEACE, not to chance in one step.

Inputs are ``X [N, D]`` and binary labels ``[N]`` (1 = concept present).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from concept_erasure import LeaceEraser, LeaceFitter
from numpy.typing import NDArray
from sklearn.pipeline import Pipeline
from torch import Tensor

from irr_ray.core.probes import ArrayLike, linear_probe, to_numpy

__all__ = ["InlpResult", "LeaceEraser", "fit_leace", "inlp", "leace_erase"]


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(to_numpy(x))
    if t.ndim != 2 or not t.dtype.is_floating_point:
        raise ValueError(
            f"{name} must be a floating-point array of shape [N, D], got {t.dtype} {list(t.shape)}"
        )
    return t


def fit_leace(x: ArrayLike, labels: ArrayLike) -> LeaceEraser:
    """Fit the LEACE eraser for a binary concept on ``x [N, D]`` (fitted in float64 on CPU).

    The concept is ``z = labels`` as one column ``[N, 1]``; the returned
    :class:`concept_erasure.LeaceEraser` maps ``[*, D] → [*, D]`` in the input's dtype.
    """
    xt = _as_tensor(x, "X").to(torch.float64)
    z = torch.as_tensor(to_numpy(labels)).reshape(-1)
    if z.shape[0] != xt.shape[0]:
        raise ValueError(f"labels has {z.shape[0]} entries for {xt.shape[0]} rows")
    if torch.unique(z).numel() < 2:
        raise ValueError("LEACE needs both classes present in the labels")
    return LeaceFitter.fit(xt, z.to(torch.float64).reshape(-1, 1)).eraser


def leace_erase(x_fit: ArrayLike, labels: ArrayLike, *others: ArrayLike) -> list[Tensor]:
    """Fit LEACE on ``(x_fit, labels)`` and return ``[eraser(x_fit), eraser(o) for o in others]`` (float64)."""
    eraser = fit_leace(x_fit, labels)
    arrays = [x_fit, *others]
    return [eraser(_as_tensor(a, "X").to(torch.float64)) for a in arrays]


@dataclass(frozen=True)
class InlpResult:
    """INLP outcome.

    ``projection [D, D]``: the final nullspace projector ``P = I − W Wᵀ`` (symmetric, idempotent);
    ``directions [k, D]``: the orthonormal rows of ``W``, in the order found;
    ``accuracies``: held-out probe accuracy before each removal (``accuracies[0]``: untouched
    data) and after the last one, so ``k + 1`` entries (``k`` entries if a round found nothing new).
    """

    projection: NDArray[np.float64]
    directions: NDArray[np.float64]
    accuracies: list[float]

    def __call__(self, x: ArrayLike) -> NDArray[np.float64]:
        """Apply the projection: ``[N, D] → [N, D]`` (``x P``)."""
        return to_numpy(x).astype(np.float64) @ self.projection


def _input_space_direction(model: Pipeline, d: int) -> NDArray[np.float64]:
    """The probe's normal in input space. The probe sees ``(x − μ)/σ``, so ``w_s·x_s = (w_s/σ)·x + c``."""
    scaler, clf = model[0], model[-1]
    return np.asarray(clf.coef_, dtype=np.float64).reshape(d) / np.asarray(scaler.scale_, dtype=np.float64)


def inlp(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    y_test: ArrayLike,
    *,
    n_iterations: int,
    seed: int,
) -> InlpResult:
    """Iterative nullspace projection with balanced logistic-regression probes.

    Round ``i``: fit the linear probe on ``X_train P``, record its accuracy on ``X_test P``, take
    its direction ``w`` (in input space), project it onto the current nullspace (``P w``), normalise,
    append it to ``W``, set ``P = I − W Wᵀ``. Stops early if ``P w`` vanishes (nothing new found).
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    xtr = to_numpy(_as_tensor(x_train, "X_train")).astype(np.float64)
    xte = to_numpy(_as_tensor(x_test, "X_test")).astype(np.float64)
    ytr, yte = to_numpy(y_train).reshape(-1), to_numpy(y_test).reshape(-1)
    d = xtr.shape[1]
    projection = np.eye(d)
    basis = np.zeros((d, 0))
    found: list[NDArray[np.float64]] = []
    accuracies: list[float] = []
    for _ in range(n_iterations):
        model = linear_probe(xtr @ projection, ytr, seed=seed)
        accuracies.append(float(model.score(xte @ projection, yte)))
        w = projection @ _input_space_direction(model, d)
        norm = float(np.linalg.norm(w))
        if norm < 1e-10:  # the probe found nothing outside the removed span: done
            return InlpResult(projection=projection, directions=basis.T.copy(), accuracies=accuracies)
        found.append(w / norm)
        basis = _orthonormal_columns(np.stack(found, axis=1))
        projection = np.eye(d) - basis @ basis.T
    final = linear_probe(xtr @ projection, ytr, seed=seed)
    accuracies.append(float(final.score(xte @ projection, yte)))
    return InlpResult(projection=projection, directions=basis.T.copy(), accuracies=accuracies)


def _orthonormal_columns(stack: NDArray[np.float64]) -> NDArray[np.float64]:
    """QR of ``[D, k]``, signs aligned so column ``i`` points along the ``i``-th found direction."""
    q, r = np.linalg.qr(stack)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)
