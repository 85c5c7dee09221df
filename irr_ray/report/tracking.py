"""Where the report goes in MLflow: the study's parent run if there is one, else a ``report`` run.

The parent run is found, in order: as the ``mlflow.parentRunId`` of a sweep trial's run (the run id
recorded in ``checkpoints/<trial>/trial.json``); as a run of the study's experiment tagged
``irr_ray.role`` = ``study`` or ``sweep`` or ``irr_ray.stage`` = ``sweep`` (the sweep's parent run);
as the run with the most child runs in that experiment.
Without any, one ``report`` run (tag ``irr_ray.role = report``) is created once and reused.
Artifacts go through :class:`mlflow.MlflowClient`, so a finished parent run stays finished.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irr_ray.errors import IrrRayError
from irr_ray.report.collect import ModelRow
from irr_ray.study import StudyPaths
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, resolve_tracking_uri
from irr_ray.tracking.names import PARENT_ROLES, PARENT_RUN_TAG, REPORT_ROLE, ROLE_TAG, STAGE_TAG

ARTIFACT_DIR = "report"


@dataclass(frozen=True)
class ReportRun:
    run_id: str
    experiment_id: str
    tracking_uri: str
    is_parent: bool  # True: the study's parent run; False: a dedicated `report` run


def _study_tracking_config(paths: StudyPaths) -> tuple[str | None, str | None]:
    """(tracking.uri, experiment name) from the study's resolved ``config.yaml`` (a
    :class:`~irr_ray.study_config.StudyConfig`), if the study has one."""
    from irr_ray.study_config import load_study

    if not paths.config.is_file():
        return None, None
    study = load_study(paths.config)
    return study.tracking.uri, study.tracking.experiment or study.name


def study_tracking_uri(study_dir: str | Path, tracking_uri: str | None = None) -> str:
    """The study's tracking URI: the explicit one, else ``config.yaml``'s, else ``<study>/mlflow.db``."""
    paths = StudyPaths.at(study_dir)
    configured = tracking_uri or _study_tracking_config(paths)[0]
    return resolve_tracking_uri(configured, paths.root)


def _parent_from_trials(client: Any, rows: Sequence[ModelRow]) -> tuple[str | None, str | None]:
    from mlflow.exceptions import MlflowException

    for row in rows:
        if not row.mlflow_run_id:
            continue
        try:
            run = client.get_run(row.mlflow_run_id)
        except MlflowException:
            continue
        return run.data.tags.get(PARENT_RUN_TAG), run.info.experiment_id
    return None, None


def _parent_in_experiment(client: Any, experiment_id: str) -> str | None:
    runs = client.search_runs([experiment_id], max_results=5000)
    def role(run: Any) -> str | None:
        tags = run.data.tags
        return tags.get(ROLE_TAG) if tags.get(ROLE_TAG) in PARENT_ROLES else tags.get(STAGE_TAG)

    tagged = [r for r in runs if role(r) in PARENT_ROLES]
    if tagged:
        tagged.sort(key=lambda r: (PARENT_ROLES.index(role(r)), -r.info.start_time))
        return tagged[0].info.run_id
    children = Counter(r.data.tags[PARENT_RUN_TAG] for r in runs if PARENT_RUN_TAG in r.data.tags)
    return children.most_common(1)[0][0] if children else None


def _experiment_id(client: Any, paths: StudyPaths, uri: str, name: str | None) -> str:
    if name is not None:
        return get_or_create_experiment(name, uri, artifact_root=paths.mlflow_artifacts)
    if uri.startswith("sqlite:"):
        # a study-local database: its one experiment is the study's
        exps = [e for e in client.search_experiments() if e.name != "Default"]
        if len(exps) == 1:
            return exps[0].experiment_id
    return get_or_create_experiment(paths.root.name, uri, artifact_root=paths.mlflow_artifacts)


def report_run(study_dir: str | Path, rows: Sequence[ModelRow], tracking_uri: str | None = None) -> ReportRun:
    """The run the report is logged to (see module docstring); creates the ``report`` run if needed."""
    import mlflow

    paths = StudyPaths.at(study_dir)
    uri = study_tracking_uri(paths.root, tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent_id, experiment_id = _parent_from_trials(client, rows)
    if experiment_id is None:
        experiment_id = _experiment_id(client, paths, uri, _study_tracking_config(paths)[1])
    if parent_id is None:
        parent_id = _parent_in_experiment(client, experiment_id)
    if parent_id is not None:
        return ReportRun(parent_id, experiment_id, uri, is_parent=True)
    existing = [r for r in client.search_runs([experiment_id], max_results=5000)
                if r.data.tags.get(ROLE_TAG) == REPORT_ROLE]
    if existing:
        return ReportRun(existing[0].info.run_id, experiment_id, uri, is_parent=False)
    run = client.create_run(experiment_id, run_name="report", tags={ROLE_TAG: REPORT_ROLE})
    client.set_terminated(run.info.run_id, "FINISHED")
    return ReportRun(run.info.run_id, experiment_id, uri, is_parent=False)


def log_report_files(study_dir: str | Path, rows: Sequence[ModelRow], files: Sequence[Path],
                     tracking_uri: str | None = None) -> ReportRun:
    """Log ``files`` (report.md, pareto.png) under ``report/`` in the study's report run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    target = report_run(study_dir, rows, tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri)
    try:
        for f in files:
            client.log_artifact(target.run_id, str(f), artifact_path=ARTIFACT_DIR)
    except (MlflowException, OSError) as exc:
        raise IrrRayError(f"could not log the report to MLflow run {target.run_id} at {target.tracking_uri}: "
                          f"{exc}") from None
    return target
