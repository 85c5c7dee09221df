"""The method's table on the local set, end to end: mean matching closes the class-mean gap but is
not concept erasure — LEACE takes the linear probe to chance, matching does not."""

from __future__ import annotations

import json

import mlflow
import pytest

from irr_ray.cli import main
from tests.sentiment.conftest import REPO, TEST_OVERRIDES

CONFIG = str(REPO / "experiments" / "sentiment.yaml")


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def _rows(report):
    return {r["method"]: r for r in report["rows"]}


def test_table_has_the_methods_rows(sentiment_table):
    rows = sentiment_table["report"]["rows"]
    assert [r["method"] for r in rows] == ["baseline", "mean_l2", "LEACE (post-hoc, on baseline)",
                                           "INLP (post-hoc, on baseline)"]
    text = sentiment_table["paths"].table_md.read_text()
    assert "| baseline |" in text and "| LEACE (post-hoc, on baseline) |" in text
    saved = json.loads(sentiment_table["paths"].table_json.read_text())
    assert [r["linear_probe"] for r in saved["rows"]] == [r["linear_probe"] for r in rows]


def test_mean_matching_closes_the_class_mean_gap(sentiment_table):
    rows = _rows(sentiment_table["report"])
    base, matched = rows["baseline"], rows["mean_l2"]
    assert base["linear_probe"] > 0.65  # the baseline carries sentiment: the comparison is not vacuous
    assert matched["mean_gap"] <= 0.1 * base["mean_gap"], rows
    assert matched["gap_closed"] >= 0.9
    assert matched["perplexity"] < 2.0 * base["perplexity"]  # still a language model


def test_leace_reaches_chance_and_matching_does_not(sentiment_table):
    rows = _rows(sentiment_table["report"])
    leace = rows["LEACE (post-hoc, on baseline)"]
    assert abs(leace["linear_probe"] - 0.5) <= 0.05, leace
    # matching is not erasure: its linear probe stays well above LEACE's bound
    assert rows["mean_l2"]["linear_probe"] >= leace["linear_probe"] + 0.1
    assert rows["INLP (post-hoc, on baseline)"]["linear_probe"] < rows["baseline"]["linear_probe"]


def test_table_is_logged_to_mlflow(sentiment_table):
    paths, report = sentiment_table["paths"], sentiment_table["report"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{paths.root / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["table.mean_l2.gap_closed"] == pytest.approx(_rows(report)["mean_l2"]["gap_closed"])
    assert "table.LEACE_post-hoc_on_baseline.linear_probe" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "sentiment")}
    assert artifacts == {"sentiment/table.md", "sentiment/table.json"}


def test_cli_reuses_trained_conditions_and_names_missing_ones(sentiment_table, capsys, tmp_path):
    root = str(sentiment_table["paths"].root)
    args = ["sentiment", "train", "--config", CONFIG, "--study-dir", root, *_sets(TEST_OVERRIDES),
            "--condition", "baseline"]
    assert main(args) == 0
    assert "already trained" in capsys.readouterr().out
    bad = ["sentiment", "eval", "--config", CONFIG, "--study-dir", str(tmp_path),
           "--condition", "mean_l2"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("irr-ray sentiment: error: no trained model for mean_l2") and "\n" not in err
    assert main(["sentiment", "eval", "--config", CONFIG, "--model", "nopath"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err
