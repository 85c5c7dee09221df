"""attack-all as a Ray task group: failures isolated, reruns skip finished models, MLflow holds
the K-curves (metric history with step = K), the summary metrics and the artifacts."""

from __future__ import annotations

import json

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.taskgroup import run_attack_all
from tests.attack.conftest import SMALL_ATTACK

ATTACKED = ("trial_a", "original", "base")


def test_failing_model_is_reported_and_the_others_finish(attacked_study) -> None:
    paths, report, _, _ = attacked_study
    assert set(report.finished) == set(ATTACKED)
    assert set(report.failed) == {"broken"}
    assert "config.json" in report.failed["broken"]  # the loader's one-line reason travels back
    for name in ATTACKED:
        assert (paths.attack_dir(name) / "attack.json").is_file()
    assert not (paths.attack_dir("broken") / "attack.json").exists()
    summary = json.loads((paths.attacks / "attack_all.json").read_text())
    assert summary["failed"].keys() == {"broken"}
    assert {m["name"] for m in summary["models"]} == {"broken", *ATTACKED}


def test_rerun_skips_finished_models(attacked_study) -> None:
    paths, _, _, uri = attacked_study
    before = {n: (paths.attack_dir(n) / "attack.json").stat().st_mtime_ns for n in ATTACKED}
    organism = json.loads((paths.attack_dir("original") / "attack.json").read_text())["model"]
    base = json.loads((paths.attack_dir("base") / "attack.json").read_text())["model"]
    again = run_attack_all(paths.root, AttackConfig.model_validate(SMALL_ATTACK), source_model=organism,
                           base_model=base, tracking_uri=uri, experiment="attack-test-study")
    assert sorted(again.skipped) == sorted(ATTACKED)
    assert not again.finished
    assert set(again.failed) == {"broken"}
    assert {n: (paths.attack_dir(n) / "attack.json").stat().st_mtime_ns for n in ATTACKED} == before


def test_mlflow_holds_k_curves_summaries_and_artifacts(attacked_study) -> None:
    import mlflow

    paths, report, trial_run, uri = attacked_study
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert report.logged["trial_a"] == trial_run  # a checkpoint logs into its own trial's run
    parent = client.get_run(trial_run).data.tags["mlflow.parentRunId"]
    for name in ATTACKED:
        run = client.get_run(report.logged[name])
        attack = json.loads((paths.attack_dir(name) / "attack.json").read_text())
        history = client.get_metric_history(run.info.run_id, "attack/refusal_harmful")
        assert [m.step for m in history] == [row["K"] for row in attack["curve"]]
        assert [m.value for m in history] == [row["refusal_harmful"] for row in attack["curve"]]
        harmless = client.get_metric_history(run.info.run_id, "attack/refusal_harmless")
        assert [m.step for m in harmless] == [row["K"] for row in attack["curve"]]
        metrics = run.data.metrics
        assert metrics["attack_rank"] == attack["attack_rank"]
        assert metrics["attack_censored"] == float(attack["censored"])
        assert metrics["k0_refusal_harmful"] == attack["curve"][0]["refusal_harmful"]
        assert metrics["k0_refusal_harmless"] == attack["curve"][0]["refusal_harmless"]
        assert 0.0 <= metrics["k0_linear_probe_acc"] <= 1.0 and 0.0 <= metrics["k0_mlp_probe_acc"] <= 1.0
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "attack")}
        assert {"attack/k_curve.png", "attack/attack.json", "attack/directions.safetensors",
                "attack/k0.json"} <= artifacts
        role = "trial" if name == "trial_a" else name
        assert run.data.tags["irr_ray.model_role"] == role
        if name != "trial_a":  # the reference models are their own runs, in the study's experiment
            assert run.info.experiment_id == client.get_run(trial_run).info.experiment_id
            assert run.data.tags.get("mlflow.parentRunId") == parent
            assert run.info.status == "FINISHED"
    assert client.get_run(trial_run).data.metrics["train/loss"] == 1.0  # the trial's own metrics kept
