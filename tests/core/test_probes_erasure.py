"""Probes against the Bayes accuracy of known Gaussians; LEACE and INLP on separable data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irr_ray.core.erasure import fit_leace, inlp, leace_erase
from irr_ray.core.probes import (
    linear_probe_accuracy,
    mlp_probe_accuracy,
    probe_accuracy,
    stratified_split,
)


def _gaussians(n: int, d: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two isotropic Gaussians at ``±(separation/2)·u``: the Bayes accuracy is ``Φ(separation/2)``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    x = rng.normal(size=(n, d)) + np.outer(y - 0.5, u) * separation
    return x, y


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def separable() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = _gaussians(1600, 12, separation=3.0, seed=0)
    return stratified_split(x, y, test_fraction=0.5, seed=0)  # type: ignore[return-value]


def test_linear_probe_reaches_bayes_accuracy(separable) -> None:  # noqa: ANN001
    x_tr, x_te, y_tr, y_te = separable
    acc = linear_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=0)
    assert acc == pytest.approx(_phi(1.5), abs=0.03)  # Bayes: Φ(1.5) ≈ 0.933
    as_torch = linear_probe_accuracy(torch.tensor(x_tr).float(), torch.tensor(y_tr), x_te, y_te, seed=0)
    assert as_torch == pytest.approx(acc, abs=0.01)


def test_mlp_probe_solves_xor_where_linear_cannot() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(800, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
    x_tr, x_te, y_tr, y_te = stratified_split(x, y, test_fraction=0.25, seed=1)
    assert linear_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=0) < 0.65
    acc = mlp_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=0, hidden_sizes=(32,), max_iter=200)
    assert acc > 0.9
    assert acc == mlp_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=0, hidden_sizes=(32,), max_iter=200)


def test_stratified_split_keeps_class_ratio_and_is_seeded() -> None:
    x = np.arange(200, dtype=float).reshape(100, 2)
    y = np.array([1] * 20 + [0] * 80)
    x_tr, x_te, y_tr, y_te = stratified_split(x, y, test_fraction=0.25, seed=3)
    assert len(y_te) == 25 and y_te.sum() == 5 and y_tr.sum() == 15
    assert np.array_equal(x_te, stratified_split(x, y, test_fraction=0.25, seed=3)[1])
    assert 0.0 <= probe_accuracy(x, y, "linear", test_fraction=0.25, seed=0) <= 1.0


def test_probe_input_validation() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy(x, np.ones(4), x, np.ones(4), seed=0)
    with pytest.raises(ValueError, match="binary"):
        linear_probe_accuracy(x, np.array([0, 1, 2, 1]), x, np.zeros(4), seed=0)
    with pytest.raises(ValueError, match="each class"):
        stratified_split(x, np.array([1, 0, 0, 0]), test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="probe kind"):
        probe_accuracy(
            np.random.default_rng(0).normal(size=(8, 2)),
            np.array([0, 1] * 4),
            "svm",
            test_fraction=0.5,
            seed=0,
        )  # type: ignore[arg-type]


def test_leace_drops_linear_probe_to_chance(separable) -> None:  # noqa: ANN001
    x_tr, x_te, y_tr, y_te = separable
    erased_tr, erased_te = leace_erase(x_tr, y_tr, x_te)
    assert linear_probe_accuracy(erased_tr, y_tr, erased_te, y_te, seed=0) == pytest.approx(0.5, abs=0.05)
    # In-sample, LEACE equalises the class-conditional means exactly (Belrose et al., Thm 3.1).
    gap = erased_tr[torch.as_tensor(y_tr) == 1].mean(0) - erased_tr[torch.as_tensor(y_tr) == 0].mean(0)
    assert gap.abs().max().item() < 1e-8
    eraser = fit_leace(torch.tensor(x_tr).float(), torch.tensor(y_tr))
    assert eraser(torch.tensor(x_te).float()).dtype == torch.float32


def test_inlp_removes_directions_and_reduces_accuracy(separable) -> None:  # noqa: ANN001
    x_tr, x_te, y_tr, y_te = separable
    result = inlp(x_tr, y_tr, x_te, y_te, n_iterations=3, seed=0)
    assert len(result.accuracies) == 4 and result.directions.shape == (3, 12)
    assert result.accuracies[0] > 0.9
    assert result.accuracies[-1] < 0.6
    p = result.projection
    np.testing.assert_allclose(p @ p, p, atol=1e-10)  # idempotent
    np.testing.assert_allclose(p, p.T, atol=1e-12)  # orthogonal projector
    np.testing.assert_allclose(result.directions @ result.directions.T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(result.directions @ p, 0.0, atol=1e-10)
    np.testing.assert_allclose(result(x_te), x_te @ p)


def test_core_package_exports_resolve() -> None:
    import irr_ray.core as core

    missing = [name for name in core.__all__ if getattr(core, name, None) is None]
    assert not missing
