"""``irr-ray bench attack --stage``: a small study's attack stage, plain vs fast path, run end to end.

The organism's instruct model (``original``), its base model (``base``) and one sweep "trial" (a
copy of the base model, measured against the instruct source) face ``dim`` and ``orthogonalize``
at small sizes; both paths must make the same choices and reach the same per-K shares (the
benchmark's own check, its exit code); ``--floor`` counts every task's matmul FLOPs. No timing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml

from irr_ray.attack.config import AttackConfig
from irr_ray.bench.stage import plain_config, run_stage
from tests.attack.study_data import fixture_study_dataset

SMALL = {"k_max": 2, "extract_n": 32, "score_n": 8, "eval_n": 16, "probe_train_n": 16,
         "stop_below_threshold": False, "suite": ["dim", "orthogonalize"], "orthogonalize": {"budgets": [1]},
         "generation": {"max_new_tokens": 10, "batch_size": 8}}


def test_plain_config_restores_the_old_path() -> None:
    fast = AttackConfig()
    plain = plain_config(fast)
    assert (fast.generation.engine, fast.generation.reuse_prefill) == ("shrinking", True)
    assert (plain.generation.engine, plain.generation.reuse_prefill) == ("hf-generate", False)
    assert plain.model_copy(update={"generation": fast.generation}) == fast  # nothing else differs


def test_stage_bench_on_a_small_study(organism_dir: Path, tmp_path: Path) -> None:
    study = tmp_path / "study"
    fixture_study_dataset(Path(organism_dir) / "data" / "wildguardmix.parquet", study / "data", n_per_class=200)
    trial = study / "checkpoints" / "trial_a"
    shutil.copytree(Path(organism_dir) / "base", trial)
    (trial / "trial.json").write_text(json.dumps({"mlflow_run_id": None}))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"attack": SMALL}))
    threads = torch.get_num_threads()
    args = argparse.Namespace(study_dir=str(study), organism_dir=str(organism_dir), stage_config=str(config),
                              suite=True, models=None, out=str(tmp_path / "stage.json"))
    try:
        assert run_stage(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "stage.json").read_text())
    assert out["identical"] is True and out["differences"] == {}
    assert out["models"] == ["trial_a", "original", "base"]
    assert set(out["seconds"]["plain"]) == {"source-k0", "trial_a", "trial_a/orthogonalize", "original",
                                            "original/orthogonalize", "base", "base/orthogonalize"}
    assert out["max_float_difference"] < 1e-6


def test_floor_counts_every_task_and_stays_below_the_fast_side(organism_dir: Path, tmp_path: Path) -> None:
    """``--floor`` on one model: every task's matmul FLOPs, the kernel split, the eager floor."""
    study = tmp_path / "study"
    fixture_study_dataset(Path(organism_dir) / "data" / "wildguardmix.parquet", study / "data", n_per_class=200)
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"attack": SMALL}))
    threads = torch.get_num_threads()
    args = argparse.Namespace(study_dir=str(study), organism_dir=str(organism_dir), stage_config=str(config),
                              suite=False, models="original", floor=True, out=str(tmp_path / "stage.json"))
    try:
        assert run_stage(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "stage.json").read_text())
    floor = out["floor"]
    assert set(floor["gflop"]) == {"source-k0", "original"} and all(v > 0 for v in floor["gflop"].values())
    assert floor["peak_gflops"] > 0 and floor["kernels"]["matmul"] > 0 and floor["kernels"]["other"] > 0
    total = next(r for r in floor["rows"] if r["tasks"] == "all")
    eager = next(r for r in floor["rows"] if r["tasks"] == "eager floor")
    assert 0 < total["floor_s"] < eager["floor_s"] < total["fast_s"]
