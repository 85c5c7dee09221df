"""A reduced organism study submitted to a local Ray head with `ray job submit`, as on a cluster:
the job runs `irr-ray run` from an uploaded working directory, must end SUCCEEDED, and leave a
complete study directory (attacks, report) and MLflow runs behind.

The study is ``experiments/organism-vllm.yaml`` where vLLM's CPU build and the wildguard package are
installed (``make test`` installs both), uploaded with the ``organism.yaml`` it extends: the data
stage's generation and judge pools on vLLM actors, WildGuard-format judging with the organism's own
judge (``{organism}/judge``), every K of the attack generated on vLLM from a weight-orthogonalised
checkpoint — the whole study on the paper's stack, for real (the method's attack; the rest of the
suite is tested on HF generation). Without them it is
``experiments/organism.yaml`` (HF generation, substring judge). The head is started here
(`tests/e2e/local_head.py`) and stopped when the test ends, so nothing outlives it.
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
ON_VLLM = importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("wildguard") is not None
STUDY_FILES = ("organism-vllm.yaml", "organism.yaml") if ON_VLLM else ("organism.yaml",)
# Shrinks the study to a smoke-sized one: 1 trial of 1 epoch, the method's attack (`dim`) up to 2
# directions on small prompt sets. The suite's other attacks run through the same task group in
# tests/attack/suite/test_taskgroup_suite.py; on vLLM every attack task starts a fresh worker
# (import torch + vLLM, engine start), so each one left out here saves about a minute of `make test`.
# The organism itself is the suite's cached one (`organism_dir` fixture).
REDUCED = ["data.max_samples=400", "sweep.num_samples=1", "sweep.max_concurrent_trials=1",
           "sweep.points_to_evaluate=[cov_kd]", "train.epochs=1", "train.max_train_samples=64",
           "train.eval.n_per_class=8", "attack.k_max=2", "attack.extract_n=32", "attack.score_n=8",
           "attack.eval_n=32", "attack.suite=[dim]"]
JOB_TIMEOUT_S = 1800

pytestmark = [pytest.mark.slow]  # a missing or renamed study file fails the test (shutil.copy), never skips it


@pytest.mark.timeout(JOB_TIMEOUT_S + 600, func_only=True)  # the shared organism build is a fixture
def test_ray_job_submit_runs_a_reduced_organism_study(tmp_path: Path, organism_dir: Path) -> None:
    import mlflow
    from ray.job_submission import JobStatus

    workdir = tmp_path / "job"
    workdir.mkdir()
    for name in STUDY_FILES:  # the study file and the one it extends
        shutil.copy(EXPERIMENTS / name, workdir / name)
    study = tmp_path / "study"
    with local_head(tmp_path / "ray_head.log") as head:
        job = head.submit_and_wait(
            workdir, ["irr-ray", "run", STUDY_FILES[0], "--study-dir", str(study), "--set", f"organism.dir={organism_dir}",
                      *[a for kv in REDUCED for a in ("--set", kv)]], JOB_TIMEOUT_S)
    assert job.status == JobStatus.SUCCEEDED, job.logs[-5000:]

    attacks = sorted(p.parent.name for p in (study / "attacks").glob("*/attack.json"))
    assert {"original", "base"} <= set(attacks) and len(attacks) >= 3, attacks
    assert all((study / "attacks" / name / "profile.json").is_file() for name in attacks)
    assert (study / "report.md").is_file() and (study / "pareto.png").is_file()
    assert "attack_rank" in job.logs  # the report table printed at the end of the run

    client_ml = mlflow.MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = [r for e in client_ml.search_experiments() for r in client_ml.search_runs([e.experiment_id])]
    ranked = [r for r in runs if "attack_rank" in r.data.metrics]
    assert len(ranked) == len(attacks), [r.info.run_name for r in runs]
    assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
    assert any("mlflow.parentRunId" in r.data.tags for r in runs)  # sweep trials are child runs
    if ON_VLLM:
        _assert_ran_on_vllm_with_the_wildguard_format_judge(study, organism_dir, attacks)


def _assert_ran_on_vllm_with_the_wildguard_format_judge(study: Path, organism_dir: Path, attacked: list[str]) -> None:
    judge_dir = str((organism_dir / "judge").resolve())
    manifest = json.loads((study / "data" / "manifest.json").read_text())
    assert manifest["config"]["generation"]["backend"] == "vllm"
    assert manifest["judge"]["kind"] == "wildguard" and manifest["judge"]["engine"] == "vllm"
    assert manifest["judge"]["model"] == judge_dir
    assert manifest["judge_parse_errors"] == 0
    for name in attacked:
        log = json.loads((study / "attacks" / name / "attack_log.json").read_text())
        assert log["judge"]["engine"] == "vllm" and log["judge"]["model"] == judge_dir
        doc = json.loads((study / "attacks" / name / "attack.json").read_text())
        assert doc["config"]["generation"]["backend"] == "vllm" and [r["K"] for r in doc["curve"]][0] == 0
    original = json.loads((study / "attacks" / "original" / "attack.json").read_text())
    assert original["curve"][0]["refusal_harmful"] >= 0.8  # the organism refuses, as judged by its judge
