"""MLflow helpers shared by every stage.

Facts that shape this module (MLflow 3.17): the file store raises, so tracking is SQLite
(``sqlite:////abs/path/mlflow.db``, four slashes: absolute, or each Ray worker would create its own
database) or an ``http(s)://`` server; experiments are created with an absolute
``artifact_location`` or artifacts land in the Ray session directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from irr_ray.errors import ConfigError

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"


def sqlite_uri(db_path: str | Path) -> str:
    """Absolute SQLite URI for a database file."""
    return "sqlite:///" + str(Path(db_path).expanduser().resolve())


def resolve_tracking_uri(configured: str | None, study_root: str | Path) -> str:
    """``configured`` may be ``None``/``"sqlite"`` (study-local database), ``"env"`` (take
    ``MLFLOW_TRACKING_URI``, e.g. the cluster's MLflow server), an ``http(s)://`` URI, or a
    ``sqlite:`` URI (made absolute)."""
    if configured in (None, "", "sqlite", "local"):
        return sqlite_uri(Path(study_root) / "mlflow.db")
    if configured == "env":
        uri = os.environ.get(ENV_URI)
        if not uri:
            raise ConfigError(f"tracking.uri is 'env' but {ENV_URI} is not set (e.g. http://127.0.0.1:5000)")
        return uri
    if configured.startswith("sqlite:///"):
        return sqlite_uri(configured[len("sqlite:///"):])
    if configured.startswith(("http://", "https://", "databricks")):
        return configured
    if configured.startswith("file:") or "mlruns" in configured:
        raise ConfigError(f"tracking.uri {configured!r}: the MLflow file store is not supported; use sqlite or a server")
    raise ConfigError(f"tracking.uri {configured!r}: expected sqlite, env, sqlite:///PATH or http(s)://HOST:PORT")


def get_or_create_experiment(name: str, tracking_uri: str, artifact_root: str | Path | None = None) -> str:
    """Experiment id of ``name`` at ``tracking_uri``, creating it with an absolute artifact
    location (``artifact_root``, for SQLite studies) when missing. Safe under concurrent creation."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None and tracking_uri.startswith("sqlite:"):
        root = Path(artifact_root).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ------------------------------------------------------------------------- runs (both sweeps)

PARAM_BATCH = 100  # MLflow's log_batch limit on params per call
PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value's length


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (sorted, values as text, cut to MLflow's limit) in batches MLflow accepts."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:PARAM_VALUE_MAX]) for k, v in sorted(params.items())]
    for i in range(0, len(items), PARAM_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAM_BATCH])


def terminate_run(uri: str, run_id: str, status: str) -> None:
    """End ``run_id`` with ``status``; a tracking error is logged, never raised (it must not mask
    the error that ended the run)."""
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).set_terminated(run_id, status)
    except Exception as exc:
        log.warning("could not close the MLflow run %s: %s", run_id, exc)


def open_parent_run(uri: str, experiment_id: str, state_path: Path, *, run_name: str, tags: dict[str, str],
                    params: dict[str, Any], config_hash: str, resume: bool) -> str:
    """A sweep's parent run: created once (params logged, its id kept in ``state_path``); a
    ``resume`` reopens the recorded run, and refuses when ``config_hash`` changed."""
    from mlflow import MlflowClient

    from irr_ray.utils.files import write_json_atomic

    client = MlflowClient(tracking_uri=uri)
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("config_hash") != config_hash:
            raise ConfigError(f"the sweep config changed since {state_path} was written; resume needs the same "
                              "settings (or start a new study dir)")
        client.update_run(state["parent_run_id"], status="RUNNING")
        return str(state["parent_run_id"])
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    log_params(client, run_id, params)
    write_json_atomic(state_path, {"parent_run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri,
                                   "config_hash": config_hash})
    return run_id


@contextlib.contextmanager
def parent_run(uri: str, experiment_id: str, state_path: Path, **kwargs: Any) -> Iterator[str]:
    """:func:`open_parent_run` for the block, ended FINISHED when it completes, KILLED on Ctrl-C
    (``KeyboardInterrupt``, incl. an interrupted sweep) and FAILED on any other error."""
    run_id = open_parent_run(uri, experiment_id, state_path, **kwargs)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        terminate_run(uri, run_id, status)
