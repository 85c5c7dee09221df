"""The sweep driver: Ray Tune over λ_mean / λ_cov / KD / condition, Optuna × ASHA, MLflow runs.

Steps of :func:`run_sweep` (``irr-ray sweep``):

1. resolve the study directory, data dir and source model to absolute paths;
2. MLflow: the study's experiment (absolute artifact location) and the sweep's parent run —
   created once, its id kept in ``<study>/sweep/<name>.mlflow.json`` so ``--resume`` reopens it;
3. Ray: connect to ``ray.address`` or start a local instance (``num_cpus``/``num_gpus``);
4. Tune: ``OptunaSearch`` (seeded TPE; the named presets as ``points_to_evaluate``) ×
   ``ASHAScheduler`` on ``training_iteration`` = epoch (``max_t`` = epochs), ``num_samples``,
   ``max_concurrent_trials``, per-trial resources, ``FailureConfig(max_failures)``, checkpoints
   through ``tune.report`` (``num_to_keep`` per trial). ``--resume`` restores an interrupted
   sweep with ``Tuner.restore(..., resume_unfinished=True)``: finished trials are not rerun,
   unfinished ones continue from their last checkpoint;
5. close MLflow child runs that are still RUNNING (FINISHED / KILLED = stopped early / FAILED);
6. export every trial's last checkpoint to ``<study>/checkpoints/<trial_name>/`` (HF dir +
   ``trial.json``) for the attack stage, and write ``<study>/sweep/<name>.summary.json``.

``baseline`` (no fine-tune) is never a trial: the attack stage evaluates the source model itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irr_ray.config import config_dict, flatten, stable_hash
from irr_ray.errors import ConfigError, IrrRayError
from irr_ray.study import StudyPaths
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, resolve_tracking_uri
from irr_ray.train.checkpoint import TRIAL_JSON, export_checkpoint, read_trial_json
from irr_ray.train.config import SweepStudy, TrainConfig
from irr_ray.train.presets import all_presets
from irr_ray.train.space import check_space, preset_points, search_space
from irr_ray.train.tracking import (
    FAILED,
    KILLED,
    TrialRunStatusCallback,
    close_open_children,
    terminate_if_open,
    trial_events,
    trial_status,
    unfinished_trials,
)
from irr_ray.train.trainable import TrialContext, train_trial
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ config


def resolve_path(value: str, base: Path) -> str:
    """``value`` as an absolute path; relative paths are relative to ``base``."""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def base_train_config(study: SweepStudy, cwd: Path) -> TrainConfig:
    """The study's ``train`` section with the source model made absolute; must train ≥ 1 epoch."""
    model = study.train.model or study.source_model
    if not model:
        raise ConfigError("set `source_model` (or `train.model`) in the study file")
    local = Path(model).expanduser()
    is_local = local.is_absolute() or model.startswith(".") or (cwd / local).exists()
    cfg = study.train.model_copy(update={"model": resolve_path(model, cwd) if is_local else model})
    if cfg.epochs < 1:
        raise ConfigError("train.epochs must be >= 1 for a sweep (epochs 0 is the no-fine-tune baseline)")
    return cfg


# ------------------------------------------------------------------------------------ driver


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every trial ended (Ctrl-C); its state is saved for ``--resume``."""


@dataclass
class SweepOutcome:
    experiment_path: Path
    parent_run_id: str
    trials: list[dict[str, Any]]
    wall_seconds: float


def _trial_label(trial: Any) -> str:
    cfg = trial.config or {}
    label = str(cfg.get("condition") or cfg.get("match") or "trial")
    return f"{label}_{trial.trial_id}"


def _state_file(paths: StudyPaths, name: str) -> Path:
    return paths.sweep / f"{name}.mlflow.json"


def _open_parent_run(study: SweepStudy, paths: StudyPaths, uri: str, exp_id: str, config_hash: str,
                     resume: bool) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    state_path = _state_file(paths, study.name)
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("config_hash") != config_hash:
            raise ConfigError(f"the sweep config changed since {state_path} was written; resume needs the same "
                              "train/sweep settings (or start a new study dir)")
        client.update_run(state["parent_run_id"], status="RUNNING")
        return str(state["parent_run_id"])
    run = client.create_run(exp_id, run_name=f"sweep-{study.name}",
                            tags={"irr_ray.stage": "sweep", "irr_ray.study": str(paths.root)})
    from mlflow.entities import Param

    params = flatten({"train": config_dict(study.train), "sweep": config_dict(study.sweep)})
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    write_json_atomic(state_path, {"parent_run_id": run.info.run_id, "experiment_id": exp_id,
                                   "tracking_uri": uri, "config_hash": config_hash})
    return run.info.run_id


def _init_ray(study: SweepStudy) -> bool:
    """Connect to / start Ray; True if this call started it (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if study.ray.address:
        ray.init(address=study.ray.address)
    else:
        ray.init(num_cpus=study.ray.num_cpus, num_gpus=study.ray.num_gpus, include_dashboard=False)
    return True


def run_sweep(study: SweepStudy, study_dir: str | Path | None = None, resume: bool = False,
              data_dir: str | Path | None = None, cwd: Path | None = None, verbose: bool = True) -> SweepOutcome:
    """Run (or resume) the study's sweep; see the module docstring."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t0 = time.perf_counter()
    cwd = (cwd or Path.cwd()).resolve()
    root = study_dir or study.study_dir
    if not root:
        raise ConfigError("no study directory: set `study_dir` in the study file or pass --study-dir")
    paths = StudyPaths.at(resolve_path(str(root), cwd))
    sweep = study.sweep
    data = Path(resolve_path(str(data_dir or sweep.data_dir or paths.data), cwd))
    if not (data / "train.parquet").is_file():
        raise IrrRayError(f"{data / 'train.parquet'} not found: run `irr-ray data` first or pass --data-dir")
    base = base_train_config(study, cwd)
    presets = all_presets(sweep.presets)
    check_space(sweep, base, presets)
    points = preset_points(sweep, base, presets)
    experiment_path = paths.sweep / study.name
    if experiment_path.exists() and not resume:
        raise IrrRayError(f"a sweep already exists at {experiment_path}: pass --resume to continue it, "
                          "or use another --study-dir")
    paths.sweep.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(study.tracking.uri, paths.root)
    exp_id = get_or_create_experiment(study.tracking.experiment or study.name, uri, paths.mlflow_artifacts)
    config_hash = stable_hash({"train": config_dict(base), "sweep": config_dict(sweep), "data": str(data)})
    parent = _open_parent_run(study, paths, uri, exp_id, config_hash, resume)

    # One checkpoint per epoch of a seconds-long epoch makes Tune warn about "excessive" state
    # snapshots on every report; with num_to_keep=1 they are expected and cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_ray = _init_ray(study)
    status = FAILED
    try:
        ctx = TrialContext(base_train=config_dict(base), presets=presets, data_dir=str(data), tracking_uri=uri,
                           experiment_id=exp_id, parent_run_id=parent,
                           threads=max(1, int(sweep.resources.cpu)), tags={"irr_ray.study": str(paths.root)},
                           fault=TrialContext.fault_from_env())
        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx),
                                        {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
        key = str(experiment_path)
        callback = TrialRunStatusCallback(uri, exp_id, parent, base.epochs, sweep.metric, verbose, key=key)
        trial_events(key)["started"].clear()
        trial_events(key)["ended"].clear()
        if resume and tune.Tuner.can_restore(str(experiment_path)):
            if verbose:
                print(f"[sweep] resuming {experiment_path}", flush=True)
            tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=search_space(sweep.space),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric, mode=sweep.mode,
                    search_alg=OptunaSearch(points_to_evaluate=points or None, seed=sweep.optuna_seed),
                    scheduler=ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                            grace_period=min(sweep.asha.grace_period, base.epochs),
                                            reduction_factor=sweep.asha.reduction_factor),
                    num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
                    reuse_actors=sweep.reuse_actors, trial_name_creator=_trial_label,
                    trial_dirname_creator=_trial_label),
                run_config=tune.RunConfig(
                    name=study.name, storage_path=str(paths.sweep), callbacks=[callback],
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=sweep.keep_checkpoints),
                    verbose=0),  # progress: one line per epoch from the callback
            )
        results = tuner.fit()
        incomplete = results.num_terminated + results.num_errors < len(results) or unfinished_trials(key)
        if len(results) < sweep.num_samples or incomplete:
            # Tune returns normally on SIGINT after saving its state: the sweep is not done.
            close_open_children(uri, exp_id, parent, KILLED)
            raise SweepInterrupted(f"sweep interrupted; continue it with --resume ({experiment_path})")
        trials = export_trials(results, paths, base.epochs, uri, exp_id, parent, sweep.metric, verbose)
        close_open_children(uri, exp_id, parent, KILLED)
        _log_best(uri, parent, trials, sweep.metric, sweep.mode)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        _close_parent(uri, parent, status)
        if started_ray:
            import ray

            ray.shutdown()
    outcome = SweepOutcome(experiment_path, parent, trials, time.perf_counter() - t0)
    write_json_atomic(paths.sweep / f"{study.name}.summary.json", {
        "experiment_path": str(experiment_path), "parent_run_id": parent, "tracking_uri": uri,
        "wall_seconds": outcome.wall_seconds, "trials": trials})
    return outcome


def _log_best(uri: str, parent: str, trials: list[dict[str, Any]], metric: str, mode: str) -> None:
    """The parent run records the best trial's final ``metric`` and name."""
    from mlflow import MlflowClient

    scored = [t for t in trials if isinstance(t.get("final_metric"), (int, float))]
    if not scored:
        return
    pick = max if mode == "max" else min
    best = pick(scored, key=lambda t: t["final_metric"])
    client = MlflowClient(tracking_uri=uri)
    client.log_metric(parent, f"best_{metric}", float(best["final_metric"]))
    client.set_tag(parent, "best_trial", best["trial_name"])


def _close_parent(uri: str, parent: str, status: str) -> None:
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).set_terminated(parent, status)
    except Exception as exc:  # never mask the sweep's own error
        log.warning("could not close the sweep's MLflow run %s: %s", parent, exc)


def export_trials(results: Any, paths: StudyPaths, max_epochs: int, uri: str, exp_id: str, parent: str,
                  metric: str, verbose: bool = True) -> list[dict[str, Any]]:
    """Close each trial's MLflow run with its final status and export its last checkpoint."""
    out = []
    for result in results:
        trial_name = Path(result.path).name
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id", ""))
        epochs_done = int(metrics.get("training_iteration", 0))
        error = result.error is not None
        status = trial_status(error, epochs_done, max_epochs)
        entry: dict[str, Any] = {
            "trial_name": trial_name, "trial_id": trial_id, "status": status, "sampled": result.config,
            "epochs_completed": epochs_done, "stopped_early": status == KILLED,
            "final_metric": metrics.get(metric), "error": str(result.error) if error else None,
            "checkpoint": None,
        }
        if trial_id:
            terminate_if_open(uri, exp_id, parent, trial_id, status,
                              tags={"irr_ray.stopped_early": str(status == KILLED).lower()})
        if result.checkpoint is not None and not error:
            entry["checkpoint"] = str(_export_one(result, paths, trial_name, entry, metrics, uri))
        out.append(entry)
        if verbose:
            print(f"[sweep] {trial_name}: {status}, {epochs_done}/{max_epochs} epochs, "
                  f"{metric}={_fmt(metrics.get(metric))}", flush=True)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def _export_one(result: Any, paths: StudyPaths, trial_name: str, entry: dict[str, Any],
                metrics: dict[str, Any], uri: str) -> Path:
    dst = paths.checkpoint_dir(trial_name)
    source = result.checkpoint.path
    if (dst / TRIAL_JSON).is_file() and read_trial_json(dst).get("tune_checkpoint") == source:
        return dst  # exported before (resumed sweep): nothing changed
    with result.checkpoint.as_directory() as ckpt_dir:
        info = read_trial_json(ckpt_dir)
        final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trial = {
            "name": trial_name, "trial_id": entry["trial_id"], "mlflow_run_id": info.get("mlflow_run_id"),
            "tracking_uri": uri, "condition": (result.config or {}).get("condition"),
            "sampled": result.config, "config": info.get("config"), "source_model": info.get("source_model"),
            "metrics": final, "epochs_completed": entry["epochs_completed"],
            "stopped_early": entry["stopped_early"], "status": entry["status"], "tune_checkpoint": source,
        }
        export_checkpoint(ckpt_dir, dst, trial)
    if trial["mlflow_run_id"]:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).set_tag(trial["mlflow_run_id"], "checkpoint_path", str(dst))
    return dst
