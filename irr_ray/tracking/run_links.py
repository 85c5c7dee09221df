"""Each attacked model's MLflow run, as a link into the MLflow UI.

Where a model's run is recorded: ``attacks/<model>/mlflow.json`` (written by
:func:`irr_ray.tracking.attack_logging.log_attack`: the run the attack results went to — a trial's
own run, or the ``attack:original`` / ``attack:base`` run), else ``checkpoints/<model>/trial.json``'s
``mlflow_run_id`` (a trial whose attack is not logged yet). A recorded run that the study's database
does not hold (deleted, or logged to another server) gets no link rather than a broken one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from irr_ray.report.collect import ModelRow
from irr_ray.study import StudyPaths
from irr_ray.tracking.attack_logging import logged_run_id


@dataclass(frozen=True)
class ModelRun:
    model: str
    run_id: str
    experiment_id: str
    run_name: str

    def url(self, mlflow_url: str) -> str:
        """The run's page in the MLflow UI at ``mlflow_url``."""
        return f"{mlflow_url}/#/experiments/{self.experiment_id}/runs/{self.run_id}"


def model_runs(study_dir: str | Path, rows: Sequence[ModelRow], tracking_uri: str) -> dict[str, ModelRun]:
    """model name → its run in ``tracking_uri``, for the models that have one (module docstring)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    paths = StudyPaths.at(study_dir)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    out: dict[str, ModelRun] = {}
    for row in rows:
        run_id = logged_run_id(paths.attack_dir(row.name)) or row.mlflow_run_id
        if not run_id:
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue
        out[row.name] = ModelRun(row.name, run_id, run.info.experiment_id, run.info.run_name or run_id)
    return out
