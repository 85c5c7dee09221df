"""The sentiment study as numbered steps over one directory::

    <study>/
      data/                    train.parquet, holdout.parquet, manifest.json        (1 build)
      model/                   the local GPT-2 (model.source = local)                (1 build)
      conditions/<name>/       one fine-tuned condition (HF dir + trial.json)       (2 train)
      sweep/<name>/            Ray Tune storage of the λ grid                         (2' sweep)
      checkpoints/<trial>/     each sweep trial's exported model                     (2' sweep)
      table.md, table.json     the table: baseline / matching / LEACE / INLP         (3 eval)
      mlflow.db, mlartifacts/  MLflow (unless tracking.uri names a server)

1. **build** the data and, for ``model.source: local``, the small GPT-2 (both cached);
2. **train** the named conditions one by one (:func:`irr_ray.sentiment.train.train_condition`), or
   **sweep** the λ grid on Ray Tune (:mod:`irr_ray.sentiment.sweep`);
3. **eval** every model and write / print / log the table (:func:`evaluate_and_report`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irr_ray.errors import ConfigError
from irr_ray.sentiment.config import SentimentStudy
from irr_ray.tracking.names import SENTIMENT_EVAL_STAGE, STAGE_TAG
from irr_ray.train.config import TrainConfig
from irr_ray.utils.files import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentimentPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> SentimentPaths:
        return cls(Path(root).expanduser().resolve())

    data = property(lambda self: self.root / "data")
    model = property(lambda self: self.root / "model")
    conditions = property(lambda self: self.root / "conditions")
    sweep = property(lambda self: self.root / "sweep")
    checkpoints = property(lambda self: self.root / "checkpoints")
    table_md = property(lambda self: self.root / "table.md")
    table_json = property(lambda self: self.root / "table.json")
    mlflow_artifacts = property(lambda self: self.root / "mlartifacts")

    def condition(self, name: str) -> Path:
        return self.conditions / name


def study_paths(study: SentimentStudy, study_dir: str | Path | None = None) -> SentimentPaths:
    root = study_dir or study.study_dir
    if not root:
        raise ConfigError("no study directory: set `study_dir` in the study file or pass --study-dir")
    return SentimentPaths.at(root)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------- 1 build
def build(study: SentimentStudy, paths: SentimentPaths) -> str:
    """Data + source model (cached); returns the source model path or hub id."""
    from irr_ray.sentiment.data import build_sentiment_data
    from irr_ray.sentiment.model import resolve_source_model

    build_sentiment_data(study.data, paths.data)
    with torch_threads(study.threads):
        return resolve_source_model(study.model, paths.data, paths.model)


# ---------------------------------------------------------------------------------------- 2 train
def condition_presets(study: SentimentStudy) -> dict[str, dict[str, Any]]:
    """Named partial train configs: the study's conditions plus one per λ of the sweep grid
    (``<matching>_lam<λ>``)."""
    presets = {k: dict(v) for k, v in study.conditions.items()}
    key = lambda_key(study.conditions[study.sweep.matching])
    for lam in study.sweep.lambdas:
        presets[grid_name(study.sweep.matching, lam)] = {**study.conditions[study.sweep.matching], key: float(lam)}
    return presets


def lambda_key(preset: dict[str, Any]) -> str:
    return "lambda_cov" if preset.get("match") == "cov" else "lambda_mean"


def grid_name(matching: str, lam: float) -> str:
    return f"{matching}_lam{lam:g}"


def source_train_config(study: SentimentStudy, source_model: str) -> TrainConfig:
    """The study's base fine-tune, from ``source_model``."""
    return study.train.model_copy(update={"model": source_model})


def condition_config(study: SentimentStudy, name: str, source_model: str) -> TrainConfig:
    presets = condition_presets(study)
    if name not in presets:
        raise ConfigError(f"unknown condition {name!r}; defined: {', '.join(sorted(presets))}")
    return source_train_config(study, source_model).with_knobs(presets[name], source=f"conditions.{name}")


def condition_configs(study: SentimentStudy, source_model: str, names: Sequence[str]) -> dict[str, TrainConfig]:
    """The conditions ``names`` (the study's or the grid's) as typed, validated train configs."""
    return {name: condition_config(study, name, source_model) for name in names}


def train(study: SentimentStudy, paths: SentimentPaths, names: Sequence[str] | None = None,
          verbose: bool = True) -> dict[str, str]:
    """Build, then train each condition into ``conditions/<name>``; returns ``{name: model dir}``."""
    from irr_ray.sentiment.train import train_condition

    source = build(study, paths)
    out = {}
    for name in names or study.run_conditions:
        cfg = condition_config(study, name, source)
        with torch_threads(study.threads):
            train_condition(cfg, paths.data, paths.condition(name), condition=name, verbose=verbose)
        out[name] = str(paths.condition(name))
    return out


# ---------------------------------------------------------------------------------------- 3 eval
def trained_conditions(paths: SentimentPaths) -> dict[str, str]:
    """Every finished condition directory under ``conditions/`` (name → path)."""
    if not paths.conditions.is_dir():
        return {}
    return {p.name: str(p) for p in sorted(paths.conditions.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / "trial.json").is_file()}


def evaluate_and_report(study: SentimentStudy, paths: SentimentPaths, models: dict[str, str],
                        results: Sequence[Any] | None = None, parent_run_id: str | None = None,
                        verbose: bool = True) -> dict[str, Any]:
    """Evaluate ``models`` (name → path; the baseline gets LEACE / INLP) unless ``results`` are given,
    then write ``table.md`` / ``table.json``, print the table and log it to MLflow — as a run of its
    own, or into ``parent_run_id`` (the sweep's run)."""
    from irr_ray.sentiment.evaluate import evaluate_model, format_table, table_rows

    if study.baseline not in models:
        raise ConfigError(f"the baseline condition {study.baseline!r} has no model: train it first "
                          f"(`irr-ray sentiment train --condition {study.baseline}`)")
    if results is None:
        from irr_ray.models.loading import default_device

        device = study.eval.device or default_device()
        with torch_threads(study.threads):
            results = [evaluate_model(name, path, paths.data, study.eval, erasure=name == study.baseline,
                                      device=device) for name, path in models.items()]
    rows = table_rows(results, study.baseline)
    layer = results[0].layer
    text = format_table(rows, layer)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.table_md, text)
    report = {"layer": layer, "rows": rows, "conditions": [r.to_dict() for r in results]}
    write_json_atomic(paths.table_json, report)
    run_id = log_table(study, paths, rows, results, text, parent_run_id)
    report["mlflow_run_id"] = run_id
    if verbose:
        print(text, flush=True)
        print(f"sentiment: wrote {paths.table_md} (MLflow run {run_id})", flush=True)
    return report


def _metric_key(method: str) -> str:
    """"LEACE (post-hoc, on baseline)" → "LEACE_post-hoc_on_baseline" (MLflow-safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", method).strip("_")


def log_table(study: SentimentStudy, paths: SentimentPaths, rows: Sequence[dict[str, Any]],
              results: Sequence[Any], text: str, run_id: str | None = None) -> str:
    """Table metrics (``table.<method>.<column>``), ``table.md`` / ``table.json`` as artifacts."""
    import mlflow
    from mlflow.entities import Metric

    from irr_ray.tracking.mlflow_utils import get_or_create_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(study.tracking.uri, paths.root)
    exp_id = get_or_create_experiment(study.tracking.experiment or study.name, uri, paths.mlflow_artifacts)
    client = mlflow.MlflowClient(tracking_uri=uri)
    own_run = run_id is None
    if own_run:
        run_id = client.create_run(exp_id, run_name=f"{study.name}-eval",
                                   tags={STAGE_TAG: SENTIMENT_EVAL_STAGE}).info.run_id
    metrics = []
    for row in rows:
        for col in ("linear_probe", "mlp_probe", "mean_gap", "gap_closed", "mean_gap_rel", "perplexity"):
            value = row.get(col)
            if isinstance(value, float) and value == value:  # skip None / NaN
                metrics.append(Metric(f"table.{_metric_key(row['method'])}.{col}", value, 0, 0))
    client.log_batch(run_id, metrics=metrics)
    client.log_text(run_id, text, "sentiment/table.md")
    client.log_text(run_id, json.dumps({"rows": rows, "conditions": [r.to_dict() for r in results]}, indent=2),
                    "sentiment/table.json")
    if own_run:
        client.set_terminated(run_id, "FINISHED")
    return run_id
