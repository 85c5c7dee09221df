"""Difference of means, QR orthonormalisation, projector and safetensors I/O against float64 references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from irr_ray.core.directions import (
    RunningMean,
    diff_of_means,
    load_directions,
    orthonormalize,
    project_out,
    projector,
    save_directions,
)
from irr_ray.errors import DataValidationError, IrrRayError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


def _gram_schmidt(a: np.ndarray) -> np.ndarray:
    """Reference: classical Gram–Schmidt with re-orthogonalisation, float64, rows in order."""
    out: list[np.ndarray] = []
    for v in a.astype(np.float64):
        for _ in range(2):
            for q in out:
                v = v - (v @ q) * q
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


@pytest.mark.parametrize(("shape_h", "m"), [((1, 1, 1, 4), 1), ((3, 5, 7, 16), 9), ((2, 4, 33, 64), 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_diff_of_means_matches_float64_reference(
    shape_h: tuple[int, ...], m: int, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(0)
    layers, positions, n, hidden = shape_h
    harmful = (torch.randn(shape_h, generator=g) * 30 + 100).to(dtype)  # large offset: cancellation
    harmless = (torch.randn(layers, positions, m, hidden, generator=g) * 30 + 100).to(dtype)
    ref = harmful.double().numpy().mean(axis=2) - harmless.double().numpy().mean(axis=2)
    got = diff_of_means(harmful, harmless)
    assert got.shape == (layers, positions, hidden)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-6, atol=1e-5)


def test_diff_of_means_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        diff_of_means(torch.zeros(2, 3, 4, 8), torch.zeros(2, 2, 4, 8))
    with pytest.raises(ValueError, match=r"\[L, P, N, D\]"):
        diff_of_means(torch.zeros(3, 4, 8), torch.zeros(3, 4, 8))
    with pytest.raises(ValueError, match="≥ 1 sample"):
        diff_of_means(torch.zeros(2, 3, 0, 8), torch.zeros(2, 3, 4, 8))


def test_running_mean_equals_full_mean() -> None:
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(3, 5, 40, 16, generator=g)
    running = RunningMean()
    for chunk in acts.split([7, 20, 13], dim=2):
        running.update(chunk)
    assert running.count == 40
    torch.testing.assert_close(running.mean, acts.double().mean(dim=2))
    with pytest.raises(ValueError, match="earlier batches"):
        running.update(torch.zeros(3, 4, 2, 16))
    with pytest.raises(ValueError, match="no samples"):
        _ = RunningMean().mean


@pytest.mark.parametrize(("k", "d"), [(1, 8), (3, 16), (8, 64), (32, 32)])
def test_orthonormalize_matches_gram_schmidt(k: int, d: int) -> None:
    g = torch.Generator().manual_seed(k * 100 + d)
    raw = torch.randn(k, d, generator=g) * torch.logspace(0, 2, k)[:, None]  # different norms
    q = orthonormalize(raw)
    assert q.shape == (k, d) and q.dtype == raw.dtype
    torch.testing.assert_close(q @ q.T, torch.eye(k), rtol=0, atol=1e-5)
    np.testing.assert_allclose(q.double().numpy(), _gram_schmidt(raw.numpy()), atol=1e-5)
    assert bool(((q * raw).sum(dim=1) > 0).all())  # sign-aligned with each raw vector
    # Same span as the raw stack: removing span(q) removes every raw vector.
    torch.testing.assert_close(
        project_out(raw, q), torch.zeros_like(raw), rtol=0, atol=1e-4 * float(raw.abs().max())
    )


def test_orthonormalize_sign_alignment_flips_householder_signs() -> None:
    """LAPACK's Householder QR returns R_ii < 0 here; each result row must still point along its raw vector."""
    raw = torch.tensor([[3.0, 1.0, 1.0], [1.0, 2.0, 0.5]])
    _, r = torch.linalg.qr(raw.double().T)
    assert bool((torch.diagonal(r) < 0).all())  # the case the alignment exists for
    q = orthonormalize(raw)
    torch.testing.assert_close(q[0], raw[0] / raw[0].norm())
    assert float(q[1] @ raw[1]) > 0
    np.testing.assert_allclose(q.double().numpy(), _gram_schmidt(raw.numpy()), atol=1e-6)


def test_orthonormalize_rank_deficiency() -> None:
    e = torch.eye(4)
    raw = torch.stack([e[0], 2 * e[0], e[0] + e[1], torch.zeros(4), e[2]])
    with pytest.raises(ValueError, match="row 1 .* dependent"):
        orthonormalize(raw)
    kept = orthonormalize(raw, on_rank_deficiency="drop")
    torch.testing.assert_close(kept, e[:3])  # rows 0, 2, 4 kept in order; 1 (parallel) and 3 (zero) dropped
    with pytest.raises(ValueError, match="row 0"):
        orthonormalize(torch.zeros(2, 4))
    assert orthonormalize(torch.zeros(2, 4), on_rank_deficiency="drop").shape == (0, 4)
    more_than_d = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))  # K > D: rows 4, 5 dependent
    with pytest.raises(ValueError, match="row 4"):
        orthonormalize(more_than_d)
    assert orthonormalize(more_than_d, on_rank_deficiency="drop").shape == (4, 4)
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        orthonormalize(torch.zeros(4))


@pytest.mark.parametrize(("k", "d"), [(1, 8), (4, 32), (16, 64)])
def test_projector_idempotent_orthogonal_and_equal_to_project_out(k: int, d: int) -> None:
    g = torch.Generator().manual_seed(k + d)
    q = orthonormalize(torch.randn(k, d, generator=g, dtype=torch.float64))
    p = projector(q)
    torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-12)  # idempotent
    torch.testing.assert_close(p, p.T, rtol=0, atol=1e-12)  # symmetric
    torch.testing.assert_close(q @ p, torch.zeros(k, d, dtype=torch.float64), rtol=0, atol=1e-12)
    assert abs(float(torch.trace(p)) - (d - k)) < 1e-9  # rank d − k
    x = torch.randn(5, 3, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(project_out(x, q), x @ p, rtol=0, atol=1e-12)
    torch.testing.assert_close(project_out(project_out(x, q), q), project_out(x, q), rtol=0, atol=1e-12)


def test_save_load_round_trip(tmp_path: Path) -> None:
    directions = orthonormalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(2)))
    metadata = {"model": "organism/instruct", "layers": "[3, 5, 4]", "positions": "[-1, -2, -1]"}
    path = tmp_path / "attack" / "directions.safetensors"
    save_directions(path, directions, metadata)
    loaded, meta = load_directions(path)
    assert torch.equal(loaded, directions) and meta == metadata
    assert [p.name for p in path.parent.iterdir()] == ["directions.safetensors"]  # no temp file left


def test_save_load_reject_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="str to str"):
        save_directions(tmp_path / "d.safetensors", torch.zeros(1, 4), {"k": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"\[K, hidden\]"):
        save_directions(tmp_path / "d.safetensors", torch.zeros(4), {})
    assert not list(tmp_path.iterdir())
    with pytest.raises(IrrRayError, match="not found"):
        load_directions(tmp_path / "missing.safetensors")
    wrong_key = tmp_path / "wrong.safetensors"
    save_file({"weights": torch.zeros(2, 4)}, str(wrong_key))
    with pytest.raises(DataValidationError, match="no tensor named 'directions'"):
        load_directions(wrong_key)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(DataValidationError, match="not a readable safetensors"):
        load_directions(garbage)
    flat = tmp_path / "flat.safetensors"
    save_file({"directions": torch.zeros(4)}, str(flat))
    with pytest.raises(DataValidationError, match=r"must be \[K, hidden\]"):
        load_directions(flat)
