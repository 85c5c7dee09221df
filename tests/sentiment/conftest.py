"""Fixtures of the sentiment tests.

- ``sentiment_study``: the study config the tests run — the shipped ``experiments/sentiment.yaml``
  scaled down (2,000 reviews instead of 3,000, no MLP probes on erased features) so that the suite stays lean on 2 CPUs;
- ``sentiment_source``: its data and small GPT-2, built once into ``<repo>/.cache/sentiment-test/``
  (cached by content hash, like the organism) — the study's input, not what is under test;
- ``sentiment_table``: baseline and mean matching fine-tuned with the real trainer in a fresh
  directory, then evaluated (probes, gap, perplexity, LEACE / INLP) and logged to MLflow on SQLite.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from irr_ray.config import apply_overrides, build_config, read_yaml

REPO = Path(__file__).resolve().parents[2]
TEST_OVERRIDES = [
    "data.n_reviews=2000",
    "eval.erasure_mlp=false",
    "eval.inlp_iterations=5",
]


def load_test_study(study_dir: Path, extra: list[str] | None = None):
    from irr_ray.sentiment.config import SentimentStudy

    data = read_yaml(REPO / "experiments" / "sentiment.yaml")
    apply_overrides(data, [*TEST_OVERRIDES, f"study_dir={study_dir}", *(extra or [])])
    return build_config(SentimentStudy, data, "experiments/sentiment.yaml (test overrides)")


@pytest.fixture(scope="session")
def sentiment_cache() -> Path:
    return REPO / ".cache" / "sentiment-test"


@pytest.fixture(scope="session")
def sentiment_source(sentiment_cache: Path) -> tuple[Any, Any, str]:
    """(study, paths, source model) with data + model built in the shared cache directory."""
    from irr_ray.sentiment.study import build, study_paths

    study = load_test_study(sentiment_cache)
    paths = study_paths(study)
    return study, paths, build(study, paths)


@pytest.fixture(scope="session")
def study_copy(sentiment_source, tmp_path_factory: pytest.TempPathFactory):
    """``study_copy(name, extra_overrides) -> (study, paths)``: a fresh study directory whose data
    and model are copies of the cached ones (so fine-tunes, sweeps and MLflow start empty)."""
    from irr_ray.sentiment.study import study_paths

    _, cached, _ = sentiment_source

    def _make(name: str, extra: list[str] | None = None):
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(cached.data, root / "data")
        shutil.copytree(cached.model, root / "model")
        study = load_test_study(root, extra)
        return study, study_paths(study)

    return _make


@pytest.fixture(scope="session")
def sentiment_table(study_copy) -> dict[str, Any]:
    """Train baseline + mean matching (λ = 100) and produce the table once for the session."""
    from irr_ray.sentiment.study import evaluate_and_report, train

    study, paths = study_copy("sentiment-table")
    models = train(study, paths, ["baseline", "mean_l2"], verbose=False)
    report = evaluate_and_report(study, paths, models, verbose=False)
    return {"study": study, "paths": paths, "models": models, "report": report}
