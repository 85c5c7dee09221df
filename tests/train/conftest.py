"""Fixtures of the training-stage tests.

- ``train_data``: a study dataset (train/holdout parquet) made directly from the organism's
  WildGuardMix-shaped parquet by :func:`tests.attack.study_data.fixture_study_dataset` — a named
  stand-in for the data stage's output (the trainer reads only ``prompt`` and ``prompt_harm_label``).
- ``tiny_train``: train settings for the real organism small enough to run an epoch in about a
  second (128 prompts, one class-balanced batch of 32 per step, a 16 + 16 validation slice).
- ``write_study``: writes a study YAML (a StudyConfig) for the sweep tests.
- ``ray_session``: one local Ray (2 CPUs, no dashboard) shared by the in-process sweeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.attack.study_data import fixture_study_dataset


@pytest.fixture(scope="session")
def train_data(organism_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    return fixture_study_dataset(Path(organism_dir) / "data" / "wildguardmix.parquet", root / "data",
                                 n_per_class=200, seed=0)


@pytest.fixture(scope="session")
def source_model(organism_dir: Path) -> str:
    return str(Path(organism_dir) / "instruct")


@pytest.fixture(scope="session")
def tiny_train(source_model: str) -> dict[str, Any]:
    return {
        "model": source_model, "lr": 1e-3, "epochs": 2, "micro_batch": 32, "grad_accum": 1,
        "warmup_ratio": 0.1, "max_length": 64, "max_train_samples": 128, "teacher_batch_size": 128,
        "eval": {"n_per_class": 16, "batch_size": 32, "attack_k": 2, "attack_candidates": 2, "attack_prompts": 8},
    }


@pytest.fixture
def write_study(tmp_path: Path, tiny_train: dict[str, Any], train_data: Path):
    """``write_study(sweep_overrides, epochs=…) -> (yaml path, study dir)``."""

    def _write(sweep: dict[str, Any], epochs: int = 2, name: str = "sweep-test") -> tuple[Path, Path]:
        study_dir = tmp_path / "study"
        train = {**tiny_train, "epochs": epochs, "max_train_samples": 64}
        train["eval"] = {**tiny_train["eval"], "attack_k": 1}
        doc = {
            "name": name, "study_dir": str(study_dir), "source_model": train.pop("model"),
            "ray": {"num_cpus": 2}, "tracking": {"uri": "sqlite", "experiment": "train-tests"},
            "train": train,
            "sweep": {
                "num_samples": 8, "max_concurrent_trials": 2, "resources": {"cpu": 1, "gpu": 0},
                "asha": {"grace_period": 1, "reduction_factor": 2}, "optuna_seed": 0,
                "points_to_evaluate": ["cov_kd", "l1_kd"], "max_failures": 2,
                "data_dir": str(train_data),
                "space": {
                    "condition": {"type": "choice", "values": ["l1", "cov", "l1_kd", "cov_kd", "kd_only"]},
                    "lambda_mean": {"type": "loguniform", "low": 1.0, "high": 1000.0},
                    "lambda_cov": {"type": "loguniform", "low": 1.0, "high": 1000.0},
                    "kd_T": {"type": "uniform", "low": 0.5, "high": 4.0},
                },
                **sweep,
            },
            # Other stages' sections: validated with the rest of the study file (one schema), unused here.
            "attack": {"k_max": 4},
        }
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path, study_dir

    return _write


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
