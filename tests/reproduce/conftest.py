"""Fixtures of the reproduction-study tests: a small study dataset from the cached seed-0 organism
(:func:`tests.attack.study_data.fixture_study_dataset`) and train settings that run an epoch in
about a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.attack.study_data import fixture_study_dataset


@pytest.fixture(scope="session")
def repro_data(organism_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repro_data")
    return fixture_study_dataset(Path(organism_dir) / "data" / "wildguardmix.parquet", root / "data",
                                 n_per_class=80, seed=0)


@pytest.fixture(scope="session")
def small_train(organism_dir: Path) -> dict[str, Any]:
    return {
        "model": str(Path(organism_dir) / "instruct"), "lr": 1e-3, "epochs": 1, "micro_batch": 16, "grad_accum": 1,
        "warmup_ratio": 0.1, "max_length": 48, "max_train_samples": 48, "teacher_batch_size": 64,
        "eval": {"n_per_class": 8, "batch_size": 32, "attack_k": 1, "attack_candidates": 2, "attack_prompts": 4,
                 "reply_tokens": 0},
    }
