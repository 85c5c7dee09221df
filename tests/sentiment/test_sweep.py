"""The λ sweep on real Ray Tune (grid) with MLflow on SQLite: a tiny grid (baseline + one λ)."""

from __future__ import annotations

import mlflow
import pytest

from irr_ray.errors import IrrRayError
from irr_ray.tracking.names import ROLE_TAG, SWEEP_ROLE


@pytest.fixture(scope="module")
def sweep_run(study_copy):
    import ray

    from irr_ray.sentiment.sweep import run_sentiment_sweep

    study, paths = study_copy("sentiment-sweep", [
        "sweep.lambdas=[100]", "train.epochs=1", "train.max_train_samples=512", "eval.max_probe_train=600",
        "eval.mlp_max_iter=50", "ray.num_cpus=2"])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = run_sentiment_sweep(study, paths, verbose=False)
    finally:
        ray.shutdown()
    return study, paths, summary


def test_grid_trains_every_point_and_exports_it(sweep_run):
    study, paths, summary = sweep_run
    trials = summary["trials"]
    assert set(trials) == {"baseline", "mean_l2_lam100"}
    for name, entry in trials.items():
        assert entry["status"] == "FINISHED" and entry["epochs_completed"] == 1, entry
        assert (paths.checkpoints / name / "model.safetensors").is_file()
    assert [r["method"] for r in summary["table"]][:2] == ["baseline", "mean_l2_lam100"]
    assert paths.table_md.is_file()


def test_mlflow_holds_parent_children_and_table(sweep_run):
    _, paths, summary = sweep_run
    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    assert summary["tracking_uri"] == f"sqlite:///{paths.root / 'mlflow.db'}"
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[ROLE_TAG] == SWEEP_ROLE
    assert parent.data.params["grid"] == "baseline,mean_l2_lam100"
    assert "table.mean_l2_lam100.gap_closed" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_condition = {r.data.tags["irr_ray.condition"]: r for r in children}
    assert set(by_condition) == {"baseline", "mean_l2_lam100"}
    matched = by_condition["mean_l2_lam100"]
    assert matched.info.status == "FINISHED"
    assert float(matched.data.params["lambda_mean"]) == 100.0 and matched.data.params["match"] == "mean"
    assert by_condition["baseline"].data.params["match"] == "none"
    for run in children:
        assert {"eval/mean_gap", "eval/lm_loss", "train/loss", "final/linear_probe"} <= set(run.data.metrics)
    assert "final/leace_linear_probe" in by_condition["baseline"].data.metrics


def test_a_second_sweep_needs_resume(sweep_run):
    from irr_ray.sentiment.sweep import run_sentiment_sweep

    study, paths, _ = sweep_run
    with pytest.raises(IrrRayError, match="pass --resume"):
        run_sentiment_sweep(study, paths, verbose=False)
