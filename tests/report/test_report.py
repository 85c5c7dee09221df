"""Report stage on a synthetic study directory written to the stage contracts (attack.json, k0.json,
trial.json) with a real MLflow SQLite database: table, censored ranks, report.md, pareto.png, and
the artifacts logged to the study's parent run (or a dedicated report run)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from irr_ray.cli import main
from irr_ray.errors import IrrRayError
from irr_ray.report import build_report, collect_rows, pareto_front
from irr_ray.study import StudyPaths
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri

K_MAX = 4

# name -> (K=0 harmful, K=0 harmless, attack_rank, trial config or None for reference models)
MODELS = {
    "original": (0.95, 0.05, 2, None),
    "base": (0.10, 0.02, 0, None),
    "trial_cov_kd": (0.90, 0.08, K_MAX + 1, {"condition": "cov_kd", "match": "cov", "lambda_mean": 0.0,
                                             "lambda_cov": 3.0, "kd_T": 2.0, "kd_lambda": 1.0}),
    "trial_l1": (0.85, 0.20, 3, {"condition": "l1", "match": "mean", "lambda_mean": 0.5,
                                 "lambda_cov": 0.0, "kd_T": 1.0, "kd_lambda": 0.0}),
}


def _curve(harmful: float, harmless: float, rank: int) -> list[dict]:
    rows = []
    for k in range(0, min(rank, K_MAX) + 1):
        h = harmful if k < rank else 0.1
        row = {"K": k, "refusal_harmful": h, "refusal_harmless": harmless,
               "refusal_harmful_ci": [max(0.0, h - 0.1), min(1.0, h + 0.05)],
               "refusal_harmless_ci": [max(0.0, harmless - 0.04), harmless + 0.1]}
        if k >= 1:
            row.update(layer=1, position=-1, norm=1.0 / k, refusal_score=-1.0, kl=0.05, induce_score=0.5)
        rows.append(row)
    return rows


def _write_study(root: Path, with_mlflow_parent: bool, with_mlflow: bool = True) -> dict[str, str]:
    """Attack results for every model, trial.json for trials; a run per trial in the study's MLflow
    database, optionally children of a parent run (as the sweep writes them). Returns {name: run id}."""
    paths = StudyPaths.at(root)
    run_ids: dict[str, str] = {}
    if with_mlflow:
        uri = sqlite_uri(paths.mlflow_db)
        exp_id = get_or_create_experiment("synthetic-study", uri, artifact_root=paths.mlflow_artifacts)
        client = mlflow.MlflowClient(uri)
    parent = None
    if with_mlflow_parent:
        parent = client.create_run(exp_id, run_name="sweep", tags={"irr_ray.stage": "sweep"})
        client.set_terminated(parent.info.run_id, "FINISHED")
    for name, (harmful, harmless, rank, trial) in MODELS.items():
        d = paths.attack_dir(name)
        d.mkdir(parents=True)
        attack = {"model": str(root / "checkpoints" / name), "config": {"k_max": K_MAX, "threshold": 0.3},
                  "threshold": 0.3, "attack_rank": rank, "censored": rank > K_MAX,
                  "curve": _curve(harmful, harmless, rank)}
        (d / "attack.json").write_text(json.dumps(attack))
        (d / "k0.json").write_text(json.dumps({"refusal_harmful": harmful, "probe_layer": 2,
                                               "linear_probe_acc": 0.97, "mlp_probe_acc": 0.99}))
        if trial is not None:
            if with_mlflow:
                tags = {"mlflow.parentRunId": parent.info.run_id} if parent else {}
                child = client.create_run(exp_id, run_name=name, tags=tags)
                client.set_terminated(child.info.run_id, "FINISHED")
                run_ids[name] = child.info.run_id
            ck = paths.checkpoint_dir(name)
            ck.mkdir(parents=True)
            # as the sweep exports it: what the search sampled, and the effective training config
            sampled = {"condition": trial["condition"], "lambda_mean": 7.0, "lambda_cov": 7.0, "kd_T": 7.0}
            (ck / "trial.json").write_text(json.dumps({
                "name": name, "condition": trial["condition"], "sampled": sampled,
                "config": {k: v for k, v in trial.items() if k != "condition"}, "metrics": {"objective": 1.0},
                "mlflow_run_id": run_ids.get(name)}))
    # an attack still in progress: listed as not finished, not an error
    paths.attack_dir("trial_running").mkdir()
    return {"parent": parent.info.run_id if parent else "", **run_ids}


def _artifacts(uri: str, run_id: str) -> set[str]:
    return {f.path for f in mlflow.MlflowClient(uri).list_artifacts(run_id, "report")}


def test_report_table_markdown_plot_and_parent_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "study"
    ids = _write_study(study, with_mlflow_parent=True)

    assert main(["report", "--study", str(study)]) == 0
    out = capsys.readouterr().out

    # terminal: reference models first, then trials by robustness; censored rank shown as > K_max
    lines = [ln for ln in out.splitlines() if ln.startswith(("original", "base", "trial_"))]
    assert [ln.split()[0] for ln in lines] == ["original", "base", "trial_cov_kd", "trial_l1"]
    assert lines[2].rstrip().endswith(f"> {K_MAX}") and lines[3].rstrip().endswith(" 3")
    assert "cov_kd" in lines[2] and "0.90 [0.80, 0.95]" in lines[2] and "0.97" in lines[2]
    assert "not finished (no attack.json yet): trial_running" in out

    md = (study / "report.md").read_text()
    # only the knobs that act: λ_cov for cov matching, T because KD is on (λ_mean is blank)
    assert "| trial_cov_kd | cov_kd | - | 3 | 2 | 1 | 0.90 [0.80, 0.95] | 0.08 [0.04, 0.18] | 0.97 | 0.99 | > 4 |" in md
    assert "![Pareto plot" in md and "(pareto.png)" in md
    png = (study / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    uri = sqlite_uri(study / "mlflow.db")
    assert _artifacts(uri, ids["parent"]) == {"report/report.md", "report/pareto.png"}
    parent = mlflow.MlflowClient(uri).get_run(ids["parent"])
    assert parent.info.status == "FINISHED"  # logging artifacts does not reopen the run
    assert not [p for p in study.iterdir() if p.name.startswith(".")]  # no temp files left


def test_report_without_parent_creates_one_report_run(tmp_path: Path) -> None:
    study = tmp_path / "study"
    _write_study(study, with_mlflow_parent=False)
    first = build_report(study)
    second = build_report(study)
    assert not first.mlflow.is_parent and first.mlflow.run_id == second.mlflow.run_id
    client = mlflow.MlflowClient(first.mlflow.tracking_uri)
    runs = client.search_runs([first.mlflow.experiment_id], filter_string="tags.`irr_ray.role` = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert _artifacts(first.mlflow.tracking_uri, first.mlflow.run_id) == {"report/report.md", "report/pareto.png"}
    row = first.row("trial_l1")  # the effective config wins over what the search sampled (7.0)
    assert (row.lambda_mean, row.lambda_cov, row.kd_T, row.kd_lambda, row.match, row.censored) == (
        0.5, None, None, 0.0, "mean", False)
    assert first.row("original").condition == "original" and first.row("original").is_reference


def test_pareto_front_keeps_only_non_dominated(tmp_path: Path) -> None:
    study = tmp_path / "study"
    _write_study(study, with_mlflow_parent=False, with_mlflow=False)
    rows, missing = collect_rows(study)
    assert missing == ["trial_running"]
    # cov_kd (rank 5, 0.90) dominates l1 (3, 0.85) and base; original (2, 0.95) refuses more
    assert [r.name for r in pareto_front(rows)] == ["original", "trial_cov_kd"]


def test_no_attack_results_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty" / "attacks" / "half_done").mkdir(parents=True)
    assert main(["report", "--study", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no attack results" in err and "irr-ray attack-all" in err
    assert not (tmp_path / "empty" / "report.md").exists()


def test_malformed_attack_json_names_file_and_key(tmp_path: Path) -> None:
    d = tmp_path / "s" / "attacks" / "original"
    d.mkdir(parents=True)
    (d / "attack.json").write_text(json.dumps({"attack_rank": 1, "curve": [{"K": 1}]}))
    with pytest.raises(IrrRayError, match=r"original/attack.json: `curve` has no row with K=0"):
        build_report(tmp_path / "s", log_to_mlflow=False)
