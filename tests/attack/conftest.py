"""Shared, session-scoped fixtures of the attack tests: one small study attacked once.

The study directory holds the organism-derived dataset (:mod:`tests.attack.study_data`), a sweep
"trial" checkpoint (a copy of the organism's base model — cheap to attack: it is below the threshold
at K = 0 — with a ``trial.json`` pointing at a real MLflow run), a deliberately broken checkpoint
(``trial.json`` but no weights), and the original (instruct) and base models of the organism. ``attack-all`` runs once on real Ray (2 CPUs) with MLflow on SQLite;
the tests read what it wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.attack.study_data import fixture_study_dataset

# Small but real settings: the organism's behaviour is measured on 40 + 40 held-out prompts.
SMALL_ATTACK: dict[str, Any] = {
    "k_max": 3,
    "extract_n": 64,
    "score_n": 32,
    "eval_n": 40,
    "probe_train_n": 64,
    "stop_below_threshold": True,
    "generation": {"max_new_tokens": 12, "batch_size": 40},
    "resources": {"cpu": 1, "gpu": 0},
    "torch_threads": 1,
}


@pytest.fixture(scope="session")
def study_data(organism_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attack_data")
    return fixture_study_dataset(Path(organism_dir) / "data" / "wildguardmix.parquet", root / "data",
                                 n_per_class=400, seed=0)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def attacked_study(organism_dir: Path, study_data: Path, ray_local, tmp_path_factory: pytest.TempPathFactory):
    """(study dir, first TaskGroupReport, trial run id): attack-all run once on the small study."""
    import mlflow

    from irr_ray.attack.config import AttackConfig
    from irr_ray.attack.taskgroup import run_attack_all
    from irr_ray.study import StudyPaths
    from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri
    from irr_ray.tracking.names import ROLE_TAG, SWEEP_ROLE

    paths = StudyPaths.at(tmp_path_factory.mktemp("study"))
    shutil.copytree(study_data, paths.data)
    uri = sqlite_uri(paths.mlflow_db)
    # What the sweep leaves behind: a parent run with one child run per trial.
    exp = get_or_create_experiment("attack-test-study", uri, paths.mlflow_artifacts)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.create_run(exp, run_name="sweep", tags={ROLE_TAG: SWEEP_ROLE}).info.run_id
    trial = client.create_run(exp, run_name="trial_a", tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(trial, "train/loss", 1.0, step=0)
    client.set_terminated(trial, "FINISHED")
    client.set_terminated(parent, "FINISHED")

    instruct, base = Path(organism_dir) / "instruct", Path(organism_dir) / "base"
    shutil.copytree(base, paths.checkpoint_dir("trial_a"))
    (paths.checkpoint_dir("trial_a") / "trial.json").write_text(json.dumps({"mlflow_run_id": trial}))
    broken = paths.checkpoint_dir("broken")
    broken.mkdir(parents=True)
    (broken / "trial.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))

    cfg = AttackConfig.model_validate(SMALL_ATTACK)
    report = run_attack_all(paths.root, cfg, source_model=str(instruct), base_model=str(base),
                            tracking_uri=uri, experiment="attack-test-study")
    return paths, report, trial, uri
