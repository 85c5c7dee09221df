"""``train.batching``: the platform's class-balanced micro-batches against the method's shuffled
stream (deliverable 1 of the reproduction study): at micro-batch 2 with covariance matching every
micro-batch is degenerate, and ``trial.json`` records count and total so the fraction is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from irr_ray.config import build_config
from irr_ray.contracts import TrialDoc
from irr_ray.errors import ConfigError
from irr_ray.train.config import TrainConfig
from irr_ray.train.data import epoch_batches, shuffled_batches
from irr_ray.train.presets import resolve_train_config


def test_shuffled_batches_are_one_permutation_cut_in_order() -> None:
    batches = shuffled_batches(11, 2, seed=3, epoch=0)
    assert [len(b) for b in batches] == [2] * 5 + [1]  # the last one shorter (no drop_last)
    assert sorted(np.concatenate(batches).tolist()) == list(range(11))
    assert all((a == b).all() for a, b in zip(batches, shuffled_batches(11, 2, seed=3, epoch=0)))
    assert not all((a == b).all() for a, b in zip(batches, shuffled_batches(11, 2, seed=3, epoch=1)))
    labels = np.array([0, 1] * 8)
    balanced = epoch_batches(labels, 4, 0, 0, "balanced")
    assert all(labels[b].sum() == 2 for b in balanced)


def test_validation_applies_to_balanced_batching_only() -> None:
    with pytest.raises(ConfigError, match="needs >= 2 samples per class"):
        build_config(TrainConfig, {"match": "cov", "micro_batch": 2})
    with pytest.raises(ConfigError, match="micro_batch must be even"):
        build_config(TrainConfig, {"micro_batch": 3})
    with pytest.raises(ConfigError):
        build_config(TrainConfig, {"batching": "random"})
    for mb in (1, 2, 3):
        cfg = build_config(TrainConfig, {"match": "cov", "micro_batch": mb, "batching": "shuffled"})
        assert cfg.batching == "shuffled" and cfg.micro_batch == mb
    assert TrainConfig().batching == "balanced"


def _train(small: dict[str, Any], data: Path, out: Path, **knobs: Any) -> TrialDoc:
    from irr_ray.train.single import train_to_dir

    torch.set_num_threads(1)
    cfg = resolve_train_config(small, {"condition": "cov_kd"}).with_knobs(knobs)
    return train_to_dir(cfg, data, out, condition="cov_kd", verbose=False)


def test_micro_batch_2_shuffled_cov_kd_is_all_degenerate(small_train: dict[str, Any], repro_data: Path,
                                                         tmp_path: Path) -> None:
    doc = _train(small_train, repro_data, tmp_path / "mb2",
                 micro_batch=2, batching="shuffled", grad_accum=8, max_train_samples=32)
    steps = doc.degenerate_steps
    assert isinstance(steps, dict) and steps["steps"] > 0 and steps["count"] == steps["steps"]
    assert doc.degenerate_fraction() == 1.0
    assert doc.metrics["degenerate_steps_total"] == doc.metrics["micro_steps_total"] == steps["steps"]
    assert TrialDoc.read(tmp_path / "mb2" / "trial.json").degenerate_fraction() == 1.0


def test_balanced_batching_is_never_degenerate(small_train: dict[str, Any], repro_data: Path,
                                               tmp_path: Path) -> None:
    doc = _train(small_train, repro_data, tmp_path / "balanced")
    assert doc.config["batching"] == "balanced"
    assert doc.degenerate_steps["count"] == 0 and doc.degenerate_steps["steps"] > 0
    assert doc.degenerate_fraction() == 0.0


def test_old_trial_json_with_an_int_count_still_reads() -> None:
    doc = TrialDoc(name="t", condition="cov_kd", config={}, source_model="m", metrics={}, epochs_completed=1,
                   degenerate_steps=3)
    assert doc.degenerate_fraction() is None


def test_plan_counts_every_row_of_a_shuffled_stream() -> None:
    from irr_ray.data.config import DataConfig
    from irr_ray.plan.flops import training_rows

    data = DataConfig(max_samples=1200, train_frac=0.8)
    shuffled = build_config(TrainConfig, {"micro_batch": 1, "batching": "shuffled", "max_train_samples": 501})
    assert training_rows(data, shuffled, 5000) == 501
    assert training_rows(data, build_config(TrainConfig, {"micro_batch": 32, "max_train_samples": 501}), 5000) == 480
