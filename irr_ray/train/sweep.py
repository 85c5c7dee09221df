"""The sweep driver: Ray Tune over λ_mean / λ_cov / KD / condition, Optuna × ASHA, MLflow runs.

Steps of :func:`run_sweep` (``irr-ray sweep``, the study's ``sweep`` stage):

1. the study's typed config (:class:`~irr_ray.study_config.StudyConfig`, paths absolute): the base
   :class:`~irr_ray.train.config.TrainConfig` and one typed config per condition
   (:func:`irr_ray.train.space.check_space`);
2. MLflow: the study's experiment (absolute artifact location) and the sweep's parent run —
   created once, its id kept in ``<study>/sweep/<name>.mlflow.json`` so ``--resume`` reopens it;
3. Ray: :func:`irr_ray.runtime.ensure_ray` (``ray.address`` / ``RAY_ADDRESS``, or a local instance);
4. Tune: ``OptunaSearch`` (seeded TPE over the conditional space
   :class:`~irr_ray.train.space.KnobSpace`; the named presets as ``points_to_evaluate``) ×
   ``ASHAScheduler`` on ``training_iteration`` = epoch (``max_t`` = epochs), ``num_samples``,
   ``max_concurrent_trials``, per-trial resources, ``FailureConfig(max_failures)``, checkpoints
   through ``tune.report`` (``num_to_keep`` per trial). ``--resume`` restores an interrupted
   sweep with ``Tuner.restore(..., resume_unfinished=True)``: finished trials are not rerun,
   unfinished ones continue from their last checkpoint;
5. close MLflow child runs that are still RUNNING (FINISHED / KILLED = stopped early / FAILED);
6. export every trial's last checkpoint to ``<study>/checkpoints/<trial_name>/`` (HF dir +
   ``trial.json``) for the attack stage, and write ``<study>/sweep/<name>.summary.json``.

:func:`sweep_session`, :func:`fit_trials` and :func:`export_result` are shared with the sentiment
study's λ grid (:mod:`irr_ray.sentiment.sweep`). ``baseline`` (no fine-tune) is never a trial: the
attack stage evaluates the source model itself.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irr_ray.config import config_dict, flatten, stable_hash
from irr_ray.errors import ConfigError, IrrRayError
from irr_ray.runtime import ray_session
from irr_ray.study import StudyPaths
from irr_ray.study_config import StudyConfig
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, parent_run, resolve_tracking_uri
from irr_ray.tracking.names import ROLE_TAG, STAGE_TAG, STOPPED_EARLY_TAG, STUDY_TAG, SWEEP_ROLE
from irr_ray.train.checkpoint import TRIAL_JSON, export_checkpoint, read_trial_json
from irr_ray.train.config import ResourcesConfig, TrainConfig
from irr_ray.train.presets import all_presets
from irr_ray.train.space import KnobSpace, check_space, preset_points
from irr_ray.train.tracking import (
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


def base_train_config(study: StudyConfig, cwd: Path) -> TrainConfig:
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


# ------------------------------------------------------------------------ shared with sentiment


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before every trial ended (Ctrl-C); its state is saved for ``--resume``."""


@dataclass
class SweepOutcome:
    experiment_path: Path
    parent_run_id: str
    trials: list[dict[str, Any]]
    wall_seconds: float


def trial_label(trial: Any) -> str:
    cfg = trial.config or {}
    label = str(cfg.get("condition") or cfg.get("match") or "trial")
    return f"{label}_{trial.trial_id}"


@contextlib.contextmanager
def sweep_session(ray_settings: Any, uri: str, experiment_id: str, state_path: Path, **parent: Any) -> Iterator[str]:
    """The sweep's MLflow parent run (:func:`irr_ray.tracking.mlflow_utils.parent_run`: created or
    reopened, ended with the sweep's status) and Ray (:func:`irr_ray.runtime.ray_session`) for the
    block; yields the parent run id."""
    # One checkpoint per epoch of a seconds-long epoch makes Tune warn about "excessive" state
    # snapshots on every report; with num_to_keep=1 they are expected and cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with parent_run(uri, experiment_id, state_path, **parent) as run_id, ray_session(ray_settings):
        yield run_id


def fit_trials(ctx: TrialContext, resources: ResourcesConfig, experiment_path: Path, resume: bool, *,
               tune_config: Any, callback: Any, max_failures: int, keep_checkpoints: int = 1,
               param_space: dict[str, Any] | None = None, verbose: int = 0, announce: bool = False) -> Any:
    """Run (or, with ``resume``, restore and finish) the Tune experiment at ``experiment_path``:
    one :func:`~irr_ray.train.trainable.train_trial` per trial on ``resources``. ``verbose`` is
    Tune's own progress output; ``announce`` prints a line when a sweep is resumed."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx),
                                    {"cpu": resources.cpu, "gpu": resources.gpu})
    if resume and tune.Tuner.can_restore(str(experiment_path)):
        if announce:
            print(f"[sweep] resuming {experiment_path}", flush=True)
        tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space or {}, tune_config=tune_config,
            run_config=tune.RunConfig(
                name=experiment_path.name, storage_path=str(experiment_path.parent), callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints), verbose=verbose))
    with own_signal_handlers():
        return tuner.fit()


@contextlib.contextmanager
def own_signal_handlers() -> Iterator[None]:
    """Put the process's SIGINT / SIGTERM handlers back after the block.

    ``Tuner.fit`` installs Tune's own handlers (a first Ctrl-C stops the trials and saves the
    experiment; ``fit`` then *returns*) and leaves them installed. In ``irr-ray run`` the attack
    stage follows in the same process, where Tune's leftover handler swallowed Ctrl-C (measured:
    ``Stop signal received … ending Ray Tune run`` printed, the attack kept running). Restored,
    a Ctrl-C there raises ``KeyboardInterrupt`` again (exit 130, rerun resumes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def export_result(result: Any, dst: Path, entry: dict[str, Any], uri: str) -> Path:
    """Export a trial's last checkpoint to ``dst`` (HF dir + ``trial.json`` as a
    :class:`~irr_ray.contracts.TrialDoc`); tag its MLflow run with the path. A resumed sweep skips
    checkpoints exported before."""
    source = result.checkpoint.path
    if (dst / TRIAL_JSON).is_file():
        with contextlib.suppress(IrrRayError):
            if read_trial_json(dst).tune_checkpoint == source:
                return dst  # exported before (resumed sweep): nothing changed
    metrics = dict(result.metrics or {})
    final = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    with result.checkpoint.as_directory() as ckpt_dir:
        trial = read_trial_json(ckpt_dir).model_copy(update={
            "name": dst.name, "trial_id": entry["trial_id"], "tracking_uri": uri,
            "condition": (result.config or {}).get("condition"), "sampled": result.config, "metrics": final,
            "epochs_completed": entry["epochs_completed"], "stopped_early": entry["stopped_early"],
            "status": entry["status"], "tune_checkpoint": source})
        export_checkpoint(ckpt_dir, dst, trial)
    if trial.mlflow_run_id:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=uri).set_tag(trial.mlflow_run_id, "checkpoint_path", str(dst))
    return dst


def result_entry(result: Any, max_epochs: int, uri: str, exp_id: str, parent: str) -> dict[str, Any]:
    """A finished trial's status (FINISHED / KILLED = stopped early / FAILED), its MLflow run closed
    with that status and tagged ``irr_ray.stopped_early``."""
    metrics = dict(result.metrics or {})
    trial_id = str(metrics.get("trial_id", ""))
    epochs_done = int(metrics.get("training_iteration", 0))
    error = result.error is not None
    status = trial_status(error, epochs_done, max_epochs)
    entry: dict[str, Any] = {
        "trial_id": trial_id, "status": status, "sampled": result.config, "epochs_completed": epochs_done,
        "stopped_early": status == KILLED, "error": str(result.error) if error else None, "checkpoint": None,
    }
    if trial_id:
        terminate_if_open(uri, exp_id, parent, trial_id, status,
                          tags={STOPPED_EARLY_TAG: str(status == KILLED).lower()})
    return entry


# ------------------------------------------------------------------------------------ driver


def run_sweep(study: StudyConfig, study_dir: str | Path | None = None, resume: bool = False,
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
    conditions = check_space(sweep, base, presets)
    points = preset_points(sweep, base, presets, conditions)
    experiment_path = paths.sweep / study.name
    if experiment_path.exists() and not resume:
        raise IrrRayError(f"a sweep already exists at {experiment_path}: pass --resume to continue it, "
                          "or use another --study-dir")
    paths.sweep.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(study.tracking.uri, paths.root)
    exp_id = get_or_create_experiment(study.tracking.experiment or study.name, uri, paths.mlflow_artifacts)
    config_hash = stable_hash({"train": config_dict(base), "sweep": config_dict(sweep), "data": str(data)})
    params = flatten({"train": config_dict(study.train), "sweep": config_dict(sweep)})
    with sweep_session(study.ray, uri, exp_id, paths.sweep / f"{study.name}.mlflow.json",
                       run_name=f"sweep-{study.name}", tags={ROLE_TAG: SWEEP_ROLE, STAGE_TAG: SWEEP_ROLE, STUDY_TAG: str(paths.root)},
                       params=params, config_hash=config_hash, resume=resume) as parent:
        ctx = TrialContext(base=base, conditions=conditions, data_dir=str(data), tracking_uri=uri,
                           experiment_id=exp_id, parent_run_id=parent,
                           threads=max(1, int(sweep.resources.cpu)), tags={STUDY_TAG: str(paths.root)},
                           fault=TrialContext.fault_from_env())
        key = str(experiment_path)
        callback = TrialRunStatusCallback(uri, exp_id, parent, base.epochs, sweep.metric, verbose, key=key)
        trial_events(key)["started"].clear()
        trial_events(key)["ended"].clear()
        tune_config = tune.TuneConfig(
            metric=sweep.metric, mode=sweep.mode,
            search_alg=OptunaSearch(space=KnobSpace(sweep.space, base, conditions), metric=sweep.metric,
                                    mode=sweep.mode, points_to_evaluate=points or None, seed=sweep.optuna_seed),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=base.epochs,
                                    grace_period=min(sweep.asha.grace_period, base.epochs),
                                    reduction_factor=sweep.asha.reduction_factor),
            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent_trials,
            reuse_actors=sweep.reuse_actors, trial_name_creator=trial_label, trial_dirname_creator=trial_label)
        # progress: one line per epoch from the callback (Tune's own table off)
        results = fit_trials(ctx, sweep.resources, experiment_path, resume, tune_config=tune_config,
                             callback=callback, max_failures=sweep.max_failures,
                             keep_checkpoints=sweep.keep_checkpoints, announce=verbose)
        incomplete = results.num_terminated + results.num_errors < len(results) or unfinished_trials(key)
        if len(results) < sweep.num_samples or incomplete:
            # Tune returns normally on SIGINT after saving its state: the sweep is not done.
            close_open_children(uri, exp_id, parent, KILLED)
            raise SweepInterrupted(f"sweep interrupted; continue it with --resume ({experiment_path})")
        trials = export_trials(results, paths, base.epochs, uri, exp_id, parent, sweep.metric, verbose)
        close_open_children(uri, exp_id, parent, KILLED)
        _log_best(uri, parent, trials, sweep.metric, sweep.mode)
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


def export_trials(results: Any, paths: StudyPaths, max_epochs: int, uri: str, exp_id: str, parent: str,
                  metric: str, verbose: bool = True) -> list[dict[str, Any]]:
    """Close each trial's MLflow run with its final status and export its last checkpoint."""
    out = []
    for result in results:
        trial_name = Path(result.path).name
        metrics = dict(result.metrics or {})
        entry = result_entry(result, max_epochs, uri, exp_id, parent)
        entry = {"trial_name": trial_name, **entry, "final_metric": metrics.get(metric)}
        if result.checkpoint is not None and entry["error"] is None:
            entry["checkpoint"] = str(export_result(result, paths.checkpoint_dir(trial_name), entry, uri))
        out.append(entry)
        if verbose:
            print(f"[sweep] {trial_name}: {entry['status']}, {entry['epochs_completed']}/{max_epochs} epochs, "
                  f"{metric}={_fmt(metrics.get(metric))}", flush=True)
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)
