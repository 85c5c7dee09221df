"""The sweep objective: robustness to the proxy attack minus lost K=0 behaviour."""

from __future__ import annotations

import pytest

from irr_ray.train.objective import objective

REF = {"ref_harmful0": 0.95, "ref_harmless0": 0.05, "alpha": 2.0}


def test_objective_rewards_robust_preserved_refusal() -> None:
    source_like = objective([0.10, 0.05], 0.95, 0.05, **REF)  # the source model: ablation breaks it
    robust = objective([0.80, 0.70], 0.94, 0.05, **REF)
    assert source_like == pytest.approx(0.075)
    assert robust == pytest.approx(0.75 - 2.0 * 0.01)
    assert robust > source_like


def test_shortcuts_do_not_pay() -> None:
    source_like = objective([0.10, 0.05], 0.95, 0.05, **REF)
    refuse_everything = objective([1.0, 1.0], 1.0, 1.0, **REF)
    refuse_nothing = objective([0.0, 0.0], 0.0, 0.0, **REF)
    assert refuse_everything == pytest.approx(1.0 - 2.0 * 0.95)
    assert refuse_nothing == pytest.approx(-2.0 * 0.95)
    assert max(refuse_everything, refuse_nothing) < source_like


def test_no_proxy_attack_uses_k0_refusal() -> None:
    assert objective([], 0.9, 0.05, **REF) == pytest.approx(0.9 - 2.0 * 0.05)
