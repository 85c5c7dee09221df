"""What the study overview page shows, read from the study's documents at request time.

The rows are the report's (:func:`irr_ray.report.collect.collect_rows`: every ``attack.json``,
``k0.json``, ``trial.json`` and ``profile.json`` read through its contract in
:mod:`irr_ray.contracts`), so the overview, ``irr-ray report`` and ``report.md`` can never disagree
about a verdict; each model also gets its MLflow run (:mod:`irr_ray.tracking.run_links`). Reading
per request keeps the page current while a study is still attacking models (files are replaced
atomically, so a request never sees half a file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from irr_ray.report.build import PARETO_NAME
from irr_ray.report.collect import ModelRow, collect_rows, study_attacks
from irr_ray.study import StudyPaths
from irr_ray.tracking.mlflow_utils import sqlite_uri
from irr_ray.tracking.run_links import ModelRun, model_runs


@dataclass(frozen=True)
class StudyOverview:
    study_dir: Path
    rows: list[ModelRow]
    missing: list[str]  # attack directories without a result yet
    runs: dict[str, ModelRun]  # model name -> its MLflow run (models with one)
    mlflow_url: str

    @property
    def name(self) -> str:
        return self.study_dir.name

    @property
    def attacks(self) -> list[str]:
        """The suite's attacks in report order; ``[]`` for a ``dim``-only study."""
        return study_attacks(self.rows)

    @property
    def report_md(self) -> Path | None:
        """The study's ``report.md`` (written by ``irr-ray report``), if there is one."""
        path = StudyPaths.at(self.study_dir).report
        return path if path.is_file() else None

    @property
    def pareto_png(self) -> Path | None:
        path = self.study_dir / PARETO_NAME
        return path if path.is_file() else None

    def run_url(self, model: str) -> str | None:
        run = self.runs.get(model)
        return None if run is None else run.url(self.mlflow_url)

    def experiment_urls(self) -> list[str]:
        """The MLflow runs page of each experiment the models' runs are in."""
        ids = sorted({r.experiment_id for r in self.runs.values()})
        return [f"{self.mlflow_url}/#/experiments/{i}/runs" for i in ids]


def load_overview(study_dir: str | Path, mlflow_url: str) -> StudyOverview:
    """The study's rows and runs; raises :class:`~irr_ray.errors.IrrRayError` (one line naming the
    path) when the study has no attack result yet or a document breaks its contract."""
    paths = StudyPaths.at(study_dir)
    rows, missing = collect_rows(paths.root)
    runs = model_runs(paths.root, rows, sqlite_uri(paths.mlflow_db))
    return StudyOverview(paths.root, rows, missing, runs, mlflow_url.rstrip("/"))
