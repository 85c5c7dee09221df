"""A study directory as ``irr-ray run`` leaves it, without running one: the attack suite's documents
for ten models (original, base, eight trials) built with the contract models
(:mod:`tests.report.documents`, verdicts from the real rules), the sweep's parent run with one child
run per trial in a real MLflow SQLite database, every model's results logged by the attack stage's
own :func:`irr_ray.tracking.attack_logging.log_attack`, and ``report.md`` / ``pareto.png`` written
(and logged) by the report stage's :func:`irr_ray.report.build_report`.

The shapes follow the organism study's table in the README: the original and base broken at the
first budget or before any attack, trials broken by one attack and not others, one robust trial,
one degenerate, and one whose suite has not finished (no ``profile.json``: its verdict reads
``*``).
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from irr_ray.report import build_report
from irr_ray.study import StudyPaths
from irr_ray.tracking.attack_logging import log_attack
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri
from tests.report.documents import (
    Shape,
    attack_doc,
    curve,
    profile_doc,
    suite_attack_doc,
    suite_curve,
    trial_doc,
    write_attack_dir,
    write_suite_dir,
)

EXPERIMENT = "organism-ui-e2e"
PARENT = "sweep-organism"
K_MAX = 6
SOURCE_HARMLESS = 0.0
# the suite's attacks with their default budget schedules (README, "The attack suite")
ORTH = ("orthogonalize", "directions", (1, 2, 4))
RDO = ("rdo", "cone_dim", (1, 2, 3))
OPTUNA = ("optuna_abliteration", "trials", (12, 24, 40))
FINETUNE = ("finetune", "steps", (10, 25, 50))
SUITE = (ORTH, RDO, OPTUNA, FINETUNE)


def _same(shape: Shape, drops: dict[str, int | None] | None = None) -> dict[tuple, Shape]:
    """Every suite attack on ``shape``'s K=0 behaviour, dropping refusal at ``drops[attack]``."""
    drops = drops or {}
    return {a: Shape(shape.harmful, shape.harmless, drop_at=drops.get(a[0])) for a in SUITE}


def _trial(condition: str, **knobs: float) -> dict:
    match = "cov" if "lambda_cov" in knobs else "mean" if "lambda_mean" in knobs else "none"
    return {"condition": condition, "match": match, "lambda_mean": knobs.get("lambda_mean", 0.0),
            "lambda_cov": knobs.get("lambda_cov", 0.0), "kd_T": knobs.get("kd_T", 1.0),
            "kd_lambda": knobs.get("kd_lambda", 1.0)}


ALL_AT_FIRST = {"orthogonalize": 1, "rdo": 1, "optuna_abliteration": 12, "finetune": 10}
# name -> (dim's curve, {attack: curve}, trial config (None: a reference model), profile.json written)
MODELS: dict[str, tuple[Shape, dict[tuple, Shape], dict | None, bool]] = {
    "original": (Shape(0.99, 0.0, drop_at=1), _same(Shape(0.99, 0.0), ALL_AT_FIRST), None, True),
    "base": (Shape(0.0, 0.0), _same(Shape(0.0, 0.0)), None, True),
    "refat_529ee0dc": (Shape(0.97, 0.0, drop_at=3),
                       _same(Shape(0.97, 0.0), {"orthogonalize": 1, "rdo": 1, "finetune": 10}),
                       _trial("refat", kd_T=1.0), True),
    "refat_d0c10215": (Shape(0.97, 0.01), _same(Shape(0.97, 0.01), {"finetune": 25}),
                       _trial("refat", kd_T=0.914), True),
    "cov_kd_d43af9bc": (Shape(1.0, 0.0, drop_at=1), _same(Shape(1.0, 0.0), ALL_AT_FIRST),
                        _trial("cov_kd", lambda_cov=100.0), True),
    "kd_only_893e6d03": (Shape(1.0, 0.04, drop_at=1, degenerate_at_drop=0.8),
                         _same(Shape(1.0, 0.04), {"rdo": 1}), _trial("kd_only"), True),
    "cov_robust_1f2e3d4c": (Shape(0.96, 0.02), _same(Shape(0.96, 0.02)), _trial("cov_kd", lambda_cov=12.0), True),
    "l1_kd_462624df": (Shape(0.19, 0.10), _same(Shape(0.19, 0.10)), _trial("l1_kd", lambda_mean=100.0), True),
    "l1_0e050d0f": (Shape(0.03, 0.0), _same(Shape(0.03, 0.0)), _trial("l1", lambda_mean=8.84, kd_lambda=0.0), True),
    "random_ablation_f816f815": (Shape(1.0, 0.01), {RDO: Shape(1.0, 0.01)}, _trial("random_ablation", kd_T=3.27),
                                 False),
}


def make_study(root: Path) -> dict[str, str]:
    """Write the study under ``root``; returns {model name: its MLflow run id, PARENT: the parent's}."""
    paths = StudyPaths.at(root)
    uri = sqlite_uri(paths.mlflow_db)
    exp_id = get_or_create_experiment(EXPERIMENT, uri, artifact_root=paths.mlflow_artifacts)
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(exp_id, run_name=PARENT, tags={"irr_ray.stage": "sweep", "irr_ray.role": "sweep"})
    ids = {PARENT: parent.info.run_id}
    for name, (dim_shape, attacks, trial, with_profile) in MODELS.items():
        model = str(paths.checkpoint_dir(name))
        docs = {"dim": attack_doc(model, curve(dim_shape, K_MAX), k_max=K_MAX, source_harmless=SOURCE_HARMLESS)}
        write_attack_dir(paths.attack_dir(name), docs["dim"])
        for (attack, axis, budgets), shape in attacks.items():
            docs[attack] = suite_attack_doc(model, attack, suite_curve(shape, budgets), budget_axis=axis,
                                            source_harmless=SOURCE_HARMLESS)
            write_suite_dir(paths.attack_dir(name), docs[attack])
        if with_profile:
            profile_doc(model, docs).write(paths.profile(name))
        if trial is None:
            ids[name] = log_attack(paths.attack_dir(name), uri, role=name, name=name, experiment_id=exp_id,
                                   parent_run_id=parent.info.run_id)
            continue
        run = client.create_run(exp_id, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id})
        client.set_terminated(run.info.run_id, "FINISHED")
        trial_doc(name, trial["condition"], {k: v for k, v in trial.items() if k != "condition"},
                  run.info.run_id).write(paths.checkpoint_dir(name) / "trial.json")
        ids[name] = log_attack(paths.attack_dir(name), uri, role="trial", name=name, run_id=run.info.run_id)
    client.set_terminated(parent.info.run_id, "FINISHED")
    build_report(paths.root)
    return ids
