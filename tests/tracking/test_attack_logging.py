"""Attack results into MLflow (real MLflow on a SQLite file): the K-curve plot with refused /
complied / degenerate per class, the verdict tags, per-step history of every CurveRow field and the
summary metrics. Documents are built with the contract models, no attack runs."""

from __future__ import annotations

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
from tests.report.documents import Shape, attack_doc, curve, k0_doc, write_attack_dir

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
