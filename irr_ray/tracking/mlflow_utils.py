"""MLflow helpers shared by every stage.

Facts that shape this module (MLflow 3.17): the file store raises, so tracking is SQLite
(``sqlite:////abs/path/mlflow.db``, four slashes: absolute, or each Ray worker would create its own
database) or an ``http(s)://`` server; experiments are created with an absolute
``artifact_location`` or artifacts land in the Ray session directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from irr_ray.errors import ConfigError

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
