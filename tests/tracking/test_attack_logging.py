"""Attack results into MLflow (real MLflow on a SQLite file): the K-curve plot with refused /
complied / degenerate per class, the verdict tags, per-step history of every CurveRow field and the
summary metrics. Documents are built with the contract models, no attack runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from irr_ray.contracts import AttackDoc
from irr_ray.tracking.attack_logging import attack_metrics, log_attack, plot_k_curve
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri
from irr_ray.tracking.names import (
    ATTACK_RANK_TAG,
    MODEL_ROLE_TAG,
    PARENT_RUN_TAG,
    STOP_REASON_TAG,
    VERDICT_K_TAG,
    VERDICT_TAG,
)
from tests.report.documents import (
    Shape,
    attack_doc,
    curve,
    k0_doc,
    profile_doc,
    suite_attack_doc,
    suite_curve,
    write_attack_dir,
    write_suite_dir,
)

K_MAX = 4
PNG = b"\x89PNG\r\n\x1a\n"


def _degenerate_attack(tmp_path: Path) -> Path:
    shape = Shape(0.9, 0.05, drop_at=2, degenerate_at_drop=0.8)
    doc = attack_doc("synthetic", curve(shape, K_MAX), k_max=K_MAX, source_harmless=0.05)
    return write_attack_dir(tmp_path / "attacks" / "trial_a", doc, k0_doc("synthetic", doc.curve[0], mlp=None))


def test_k_curve_png_is_written(tmp_path: Path) -> None:
    doc = AttackDoc.read(_degenerate_attack(tmp_path) / "attack.json")
    out = plot_k_curve(doc, tmp_path / "k_curve.png")
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 10_000


def test_metrics_cover_every_curve_field(tmp_path: Path) -> None:
    doc = AttackDoc.read(_degenerate_attack(tmp_path) / "attack.json")
    metrics = {(key, step): value for key, value, step in attack_metrics(doc, None)}
    assert metrics[("attack/degenerate_harmful", 2)] == 0.8 and metrics[("attack/complied_harmful", 2)] == 0.1
    assert metrics[("attack/refusal_harmful_ci_low", 0)] == doc.curve[0].refusal_harmful_ci[0]
    assert metrics[("attack/fallback", 1)] == 0.0 and metrics[("attack/survivors", 1)] == 3.0
    assert ("attack/layer", 0) not in metrics  # None at K=0: skipped
    assert ("attack/K", 0) not in metrics  # K is the step
    assert metrics[("robust_k", 0)] == 1.0 and metrics[("attack_rank", 0)] == 2.0
    assert metrics[("k0_degenerate_harmful", 0)] == 0.0 and ("k0_linear_probe_acc", 0) not in metrics
    robust = attack_doc("m", curve(Shape(0.5, 0.05), K_MAX), k_max=K_MAX, source_harmless=0.05)
    summary = {key: value for key, value, _ in attack_metrics(robust, None)}
    assert summary["robust_k"] == -1.0 and summary["attack_censored"] == 1.0  # robust_k None


def test_log_attack_writes_verdict_tags_and_per_step_history(tmp_path: Path) -> None:
    attack_dir = _degenerate_attack(tmp_path)
    uri = sqlite_uri(tmp_path / "mlflow.db")
    exp_id = get_or_create_experiment("attack-logging", uri, artifact_root=tmp_path / "artifacts")
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(exp_id, run_name="sweep", tags={"irr_ray.role": "sweep"}).info.run_id

    run_id = log_attack(attack_dir, uri, role="original", name="original", experiment_id=exp_id,
                        parent_run_id=parent)
    assert log_attack(attack_dir, uri, role="original", name="original", experiment_id=exp_id) == run_id  # once

    run = client.get_run(run_id)
    tags = run.data.tags
    assert (tags[VERDICT_TAG], tags[VERDICT_K_TAG], tags[STOP_REASON_TAG], tags[ATTACK_RANK_TAG]) == (
        "degenerate", "2", "k_max", "2")
    assert tags[MODEL_ROLE_TAG] == "original" and tags[PARENT_RUN_TAG] == parent
    history = client.get_metric_history(run_id, "attack/degenerate_harmful")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.0), (1, 0.0), (2, 0.8), (3, 0.8), (4, 0.8)]
    harmless = client.get_metric_history(run_id, "attack/complied_harmless")
    assert sorted(m.step for m in harmless) == list(range(K_MAX + 1))
    metrics = run.data.metrics
    assert (metrics["attack_rank"], metrics["robust_k"], metrics["attack_censored"]) == (2.0, 1.0, 0.0)
    assert metrics["k0_refusal_harmful"] == 0.9 and metrics["k0_linear_probe_acc"] == 0.97
    assert "k0_mlp_probe_acc" not in metrics  # None in k0.json
    artifacts = {f.path for f in client.list_artifacts(run_id, "attack")}
    assert {"attack/k_curve.png", "attack/attack.json", "attack/k0.json"} <= artifacts
    assert (attack_dir / "k_curve.png").read_bytes()[:8] == PNG
    assert run.info.status == "FINISHED"


# ---------------------------------------------------------------------------- the attack suite

RDO_BUDGETS = [1, 2, 3]
RDO_INFO = {"loss": 0.25, "layer": 2, "within_kl_bound": True, "note": "text is not a metric", "cos": [0.1, 0.2]}


def _suite_docs(model_dir: Path) -> dict[str, AttackDoc]:
    """Next to a robust dim result: rdo breaks the model at its first budget, optuna degenerates it."""
    dim = attack_doc("m", curve(Shape(0.9, 0.05), K_MAX), k_max=K_MAX, source_harmless=0.05)
    write_attack_dir(model_dir, dim)
    rdo = suite_attack_doc("m", "rdo", suite_curve(Shape(0.9, 0.05, drop_at=1), RDO_BUDGETS, RDO_INFO),
                           budget_axis="cone_dim", source_harmless=0.05)
    optuna = suite_attack_doc("m", "optuna_abliteration",
                              suite_curve(Shape(0.9, 0.05, drop_at=25, degenerate_at_drop=0.8), [10, 25, 50]),
                              budget_axis="trials", source_harmless=0.05)
    return {"dim": dim, "rdo": rdo, "optuna_abliteration": optuna}


def _experiment(tmp_path: Path) -> tuple[str, str, mlflow.MlflowClient]:
    uri = sqlite_uri(tmp_path / "mlflow.db")
    exp_id = get_or_create_experiment("attack-logging", uri, artifact_root=tmp_path / "artifacts")
    return uri, exp_id, mlflow.MlflowClient(uri)


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_suite_results_arriving_after_dim_are_logged_into_the_same_run(tmp_path: Path) -> None:
    uri, exp_id, client = _experiment(tmp_path)
    model_dir = tmp_path / "attacks" / "original"
    docs = _suite_docs(model_dir)
    run_id = log_attack(model_dir, uri, role="original", name="original", experiment_id=exp_id)
    # a marker as irr-ray wrote it before the suite existed: it logged dim and nothing else
    (model_dir / "mlflow.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": uri, "role": "original"}))
    assert "irr_ray.verdict.dim" not in client.get_run(run_id).data.tags  # dim alone: nothing of the suite

    for attack in ("rdo", "optuna_abliteration"):
        write_suite_dir(model_dir, docs[attack])
    profile_doc("m", docs).write(model_dir / "profile.json")
    assert log_attack(model_dir, uri, role="original", name="original", experiment_id=exp_id) == run_id

    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    # per attack: curve under its prefix, step = its budget; the numbers of `info` beside it
    assert _history(client, run_id, "rdo/refusal_harmful") == [(0, 0.9), (1, 0.1), (2, 0.1), (3, 0.1)]
    assert [s for s, _ in _history(client, run_id, "optuna_abliteration/degenerate_harmful")] == [0, 10, 25, 50]
    assert _history(client, run_id, "rdo/info/loss") == [(1, 0.25), (2, 0.25), (3, 0.25)]
    assert metrics["rdo/info/within_kl_bound"] == 1.0 and metrics["rdo/info/budget"] == 3.0
    assert "rdo/info/note" not in metrics and "rdo/info/cos" not in metrics and "rdo/layer" not in metrics
    assert len(client.get_metric_history(run_id, "attack/refusal_harmful")) == K_MAX + 1  # dim not logged again
    # verdicts per attack, budget to break when broken
    assert {a: tags[f"irr_ray.verdict.{a}"] for a in docs} == {
        "dim": "robust", "rdo": "broken", "optuna_abliteration": "degenerate"}
    assert (tags["irr_ray.verdict_k.rdo"], tags["irr_ray.verdict_k.dim"], tags["irr_ray.budget_axis.rdo"]) == (
        "1", "-", "cone_dim")
    assert metrics["budget_to_break.rdo"] == 1.0 and "budget_to_break.dim" not in metrics
    assert "budget_to_break.optuna_abliteration" not in metrics  # degenerate is not broken
    assert (metrics["robust_k.rdo"], metrics["robust_k.dim"], metrics["robust_k.optuna_abliteration"]) == (
        0.0, 4.0, 10.0)
    assert metrics["min_refusal_harmful.rdo"] == 0.1
    # the profile: combined verdict, the strongest attack, whether it broke the model
    assert (tags["irr_ray.suite_verdict"], tags["irr_ray.strongest_attack"], metrics["suite_broken"]) == (
        "broken", "rdo", 1.0)
    assert tags["irr_ray.suite_reason"].startswith("rdo decided it at budget 1 of 3")
    assert tags[VERDICT_TAG] == "robust"  # the dim attack's own tag stays dim's
    # files under attack/<attack>/, each with its k_curve.png on the attack's budget axis
    rdo_files = {f.path for f in client.list_artifacts(run_id, "attack/rdo")}
    assert rdo_files == {"attack/rdo/attack.json", "attack/rdo/attack_log.json", "attack/rdo/basis.safetensors",
                         "attack/rdo/k_curve.png"}
    assert "attack/profile.json" in {f.path for f in client.list_artifacts(run_id, "attack")}
    assert (model_dir / "rdo" / "k_curve.png").read_bytes()[:8] == PNG
    marker = json.loads((model_dir / "mlflow.json").read_text())
    assert (marker["attacks"], marker["summaries"]) == (["dim", "optuna_abliteration", "rdo"],
                                                         ["dim", "optuna_abliteration", "rdo"])

    # a rerun logs nothing twice
    assert log_attack(model_dir, uri, role="original", name="original", experiment_id=exp_id) == run_id
    assert len(client.get_metric_history(run_id, "rdo/refusal_harmful")) == len(RDO_BUDGETS) + 1
    assert len(client.get_metric_history(run_id, "suite_broken")) == 1
    assert client.get_run(run_id).info.status == "FINISHED"


def test_suite_logged_at_once_into_a_trial_run(tmp_path: Path) -> None:
    uri, exp_id, client = _experiment(tmp_path)
    trial = client.create_run(exp_id, run_name="trial_0")
    client.set_terminated(trial.info.run_id, "FINISHED")
    model_dir = tmp_path / "attacks" / "trial_0"
    docs = _suite_docs(model_dir)
    write_suite_dir(model_dir, docs["rdo"])
    profile_doc("m", {"dim": docs["dim"], "rdo": docs["rdo"]}).write(model_dir / "profile.json")

    assert log_attack(model_dir, uri, role="trial", name="trial_0", run_id=trial.info.run_id) == trial.info.run_id
    run = client.get_run(trial.info.run_id)
    assert run.data.tags[VERDICT_TAG] == "robust" and run.data.tags["irr_ray.strongest_attack"] == "rdo"
    assert _history(client, trial.info.run_id, "attack/refusal_harmful")[-1] == (K_MAX, 0.9)
    assert _history(client, trial.info.run_id, "rdo/refusal_harmful")[-1] == (3, 0.1)
    assert not any(k.startswith("optuna_abliteration") for k in run.data.metrics)
    assert run.info.status == "FINISHED"  # a finished trial run stays finished

    # the next attack arrives, the profile is rewritten: both are added
    write_suite_dir(model_dir, docs["optuna_abliteration"])
    profile_doc("m", docs).write(model_dir / "profile.json")
    log_attack(model_dir, uri, role="trial", name="trial_0", run_id=trial.info.run_id)
    run = client.get_run(trial.info.run_id)
    assert run.data.tags["irr_ray.verdict.optuna_abliteration"] == "degenerate"
    assert [s for s, _ in _history(client, trial.info.run_id, "optuna_abliteration/refusal_harmful")] == [0, 10, 25, 50]
    assert len(client.get_metric_history(trial.info.run_id, "robust_k.rdo")) == 1


def test_dim_only_profile_logs_nothing_more(tmp_path: Path) -> None:
    uri, exp_id, client = _experiment(tmp_path)
    model_dir = _degenerate_attack(tmp_path)
    doc = AttackDoc.read(model_dir / "attack.json")
    profile_doc("m", {"dim": doc}).write(model_dir / "profile.json")
    run = client.get_run(log_attack(model_dir, uri, role="original", name="original", experiment_id=exp_id))
    assert not [k for k in run.data.tags if k.startswith(("irr_ray.suite", "irr_ray.strongest", "irr_ray.verdict."))]
    assert not [k for k in run.data.metrics if "." in k or k == "suite_broken"]
    assert "attack/profile.json" not in {f.path for f in client.list_artifacts(run.info.run_id, "attack")}


def test_a_model_attacked_without_dim_gets_a_run_of_its_suite(tmp_path: Path) -> None:
    uri, exp_id, client = _experiment(tmp_path)
    model_dir = tmp_path / "attacks" / "base"
    rdo = suite_attack_doc("m", "rdo", suite_curve(Shape(0.9, 0.05), RDO_BUDGETS), budget_axis="cone_dim",
                           source_harmless=0.05)
    write_suite_dir(model_dir, rdo, artifact=None)
    profile_doc("m", {"rdo": rdo}).write(model_dir / "profile.json")
    run = client.get_run(log_attack(model_dir, uri, role="base", name="base", experiment_id=exp_id))
    tags = run.data.tags
    assert (tags["irr_ray.model_role"], tags["irr_ray.model"], tags["irr_ray.verdict.rdo"]) == ("base", "m", "robust")
    assert tags["irr_ray.suite_verdict"] == "robust" and VERDICT_TAG not in tags
    assert run.data.metrics["suite_broken"] == 0.0 and "attack/refusal_harmful" not in run.data.metrics
    assert run.data.params["attack.k_max"] == "4" and run.info.status == "FINISHED"
