"""The λ sweep on Ray Tune: a grid (``tune.grid_search``) of sentiment fine-tunes, tracked in MLflow.

Steps of :func:`run_sentiment_sweep` (``irr-ray sentiment sweep``):

1. build the data and the source model (cached);
2. MLflow + Ray: the study's experiment and the sweep's parent run, and Ray, through the training
   stage's :func:`irr_ray.train.sweep.sweep_session` (the same parent-run handling and
   :func:`irr_ray.runtime.ensure_ray`);
3. (as 2)
4. Tune (:func:`irr_ray.train.sweep.fit_trials`): ``param_space = {"condition": grid_search([baseline, <matching>_lam10, …])}`` — one trial
   per λ of the matching condition plus the baseline. Each trial is the training stage's own
   trainable (:func:`irr_ray.train.trainable.train_trial`) driving a
   :class:`~irr_ray.sentiment.train.SentimentRun` on the shared trainer: one report + checkpoint
   per epoch, its own MLflow child run, restarted from its last epoch after a crash
   (``max_failures``). No scheduler: every grid point trains to the end;
5. export each trial's last checkpoint to ``checkpoints/<condition>/`` and close the child runs;
6. evaluate every exported model as a Ray task (the baseline also gets LEACE / INLP), log each
   trial's evaluation into its child run, and the table into the parent run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from irr_ray.config import config_dict, flatten, stable_hash
from irr_ray.errors import IrrRayError
from irr_ray.sentiment.config import SentimentStudy
from irr_ray.sentiment.study import (
    SentimentPaths,
    build,
    condition_configs,
    evaluate_and_report,
    grid_name,
    source_train_config,
)
from irr_ray.tracking.names import ROLE_TAG, SENTIMENT_SWEEP_STAGE, STAGE_TAG, STUDY_TAG, SWEEP_ROLE
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)

METRIC = "eval/mean_gap_rel"  # what Tune records as "best"; a grid has no search to steer


def grid(study: SentimentStudy) -> list[str]:
    """The grid's condition names, baseline first."""
    names = [grid_name(study.sweep.matching, lam) for lam in study.sweep.lambdas]
    return ([study.baseline] if study.sweep.include_baseline else []) + names


def export_results(results: Any, paths: SentimentPaths, epochs: int, uri: str, exp_id: str,
                   parent: str) -> dict[str, dict[str, Any]]:
    """Close each trial's child run with its final status and export its last checkpoint to
    ``checkpoints/<condition>``; returns ``{condition: entry}``."""
    from irr_ray.train.sweep import export_result, result_entry

    out = {}
    for result in results:
        condition = str((result.config or {}).get("condition"))
        entry = {"condition": condition, **result_entry(result, epochs, uri, exp_id, parent)}
        if result.checkpoint is not None and entry["error"] is None:
            dst = export_result(result, paths.checkpoints / condition, entry, uri)
            entry["checkpoint"] = str(dst)
            from irr_ray.train.checkpoint import read_trial_json

            entry["mlflow_run_id"] = read_trial_json(dst).mlflow_run_id
        out[condition] = entry
    return out


def evaluate_remote(study: SentimentStudy, paths: SentimentPaths, models: dict[str, str]) -> list[Any]:
    """Evaluate every model as a Ray task (``sweep.eval_cpus`` / ``eval_gpus`` each), baseline with erasure."""
    import ray

    from irr_ray.sentiment.evaluate import evaluate_model

    device = "cuda" if study.sweep.eval_gpus > 0 else "cpu"
    task = ray.remote(num_cpus=study.sweep.eval_cpus, num_gpus=study.sweep.eval_gpus)(_evaluate_task)
    refs = [task.remote(evaluate_model, name, path, str(paths.data), study.eval, name == study.baseline,
                        device, max(1, int(study.sweep.eval_cpus)))
            for name, path in models.items()]
    return ray.get(refs)


def _evaluate_task(fn, name, path, data_dir, cfg, erasure, device, threads):
    import torch

    torch.set_num_threads(threads)
    return fn(name, path, data_dir, cfg, erasure=erasure, device=device)


def _log_child_evals(uri: str, entries: dict[str, dict[str, Any]], results: list[Any]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    for r in results:
        run_id = entries.get(r.name, {}).get("mlflow_run_id")
        if not run_id:
            continue
        values = {"final/perplexity": r.perplexity, "final/mean_gap": r.mean_gap, "final/mean_gap_rel": r.mean_gap_rel,
                  "final/linear_probe": r.linear_probe, "final/mlp_probe": r.mlp_probe}
        for kind, e in r.erasure.items():
            values.update({f"final/{kind}_{k}": v for k, v in e.items()})
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()
                                          if v is not None and v == v])


def run_sentiment_sweep(study: SentimentStudy, paths: SentimentPaths, resume: bool = False,
                        verbose: bool = True) -> dict[str, Any]:
    """Run (or resume) the λ grid and produce the table; see the module docstring."""
    from ray import tune

    from irr_ray.sentiment.train import SentimentRun
    from irr_ray.tracking.mlflow_utils import get_or_create_experiment, resolve_tracking_uri
    from irr_ray.train.sweep import fit_trials, sweep_session, trial_label
    from irr_ray.train.tracking import KILLED, TrialRunStatusCallback, close_open_children
    from irr_ray.train.trainable import TrialContext

    t0 = time.perf_counter()
    source = build(study, paths)  # 1
    names = grid(study)
    base = source_train_config(study, source)
    experiment_path = paths.sweep / study.name
    if experiment_path.exists() and not resume:
        raise IrrRayError(f"a sweep already exists at {experiment_path}: pass --resume to continue it, "
                          "or use another --study-dir")
    paths.sweep.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(study.tracking.uri, paths.root)  # 2
    exp_id = get_or_create_experiment(study.tracking.experiment or study.name, uri, paths.mlflow_artifacts)
    config_hash = stable_hash({"train": config_dict(base), "grid": names, "data": config_dict(study.data)})
    params = flatten({"train": config_dict(study.train), "sweep": config_dict(study.sweep),
                      "data": config_dict(study.data), "model": config_dict(study.model)})
    params["grid"] = ",".join(names)
    with sweep_session(study.ray, uri, exp_id, paths.sweep / f"{study.name}.mlflow.json",  # 2, 3
                       run_name=f"{study.name}-sweep",
                       tags={ROLE_TAG: SWEEP_ROLE, STAGE_TAG: SENTIMENT_SWEEP_STAGE, STUDY_TAG: str(paths.root)},
                       params=params, config_hash=config_hash, resume=resume) as parent:
        ctx = TrialContext(base=base, conditions=condition_configs(study, source, names), data_dir=str(paths.data),
                           tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent,
                           threads=max(1, int(study.sweep.resources.cpu)),
                           tags={STUDY_TAG: str(paths.root)}, run_cls=SentimentRun)
        callback = TrialRunStatusCallback(uri, exp_id, parent, study.train.epochs, METRIC, verbose)
        results = fit_trials(  # 4
            ctx, study.sweep.resources, experiment_path, resume, param_space={"condition": tune.grid_search(names)},
            tune_config=tune.TuneConfig(metric=METRIC, mode="min",
                                        max_concurrent_trials=study.sweep.max_concurrent_trials,
                                        trial_name_creator=trial_label, trial_dirname_creator=trial_label),
            callback=callback, max_failures=study.sweep.max_failures, keep_checkpoints=1,
            verbose=1 if verbose else 0)
        entries = export_results(results, paths, study.train.epochs, uri, exp_id, parent)  # 5
        close_open_children(uri, exp_id, parent, KILLED)
        failed = [c for c, e in entries.items() if e["checkpoint"] is None]
        if failed:
            raise IrrRayError(f"sweep trials without a model: {', '.join(failed)} (see {experiment_path})")
        models = {c: entries[c]["checkpoint"] for c in names}
        evals = evaluate_remote(study, paths, models)  # 6
        _log_child_evals(uri, entries, evals)
        report = evaluate_and_report(study, paths, models, results=evals, parent_run_id=parent, verbose=verbose)
    summary = {"parent_run_id": parent, "tracking_uri": uri, "experiment_path": str(experiment_path),
               "trials": entries, "wall_seconds": time.perf_counter() - t0, "table": report["rows"]}
    write_json_atomic(paths.sweep / f"{study.name}.summary.json", summary)
    return summary
