"""The λ sweep on Ray Tune: a grid (``tune.grid_search``) of sentiment fine-tunes, tracked in MLflow.

Steps of :func:`run_sentiment_sweep` (``irr-ray sentiment sweep``):

1. build the data and the source model (cached);
2. MLflow: the study's experiment (absolute artifact location) and the sweep's parent run;
3. Ray: connect to ``ray.address`` or start a local instance;
4. Tune: ``param_space = {"condition": grid_search([baseline, <matching>_lam10, …])}`` — one trial
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
    base_train_dict,
    build,
    condition_presets,
    evaluate_and_report,
    grid_name,
)
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)

METRIC = "eval/mean_gap_rel"  # what Tune records as "best"; a grid has no search to steer
RUN_FACTORY = "irr_ray.sentiment.train:SentimentRun"  # what each trial of irr_ray.train's trainable drives


def grid(study: SentimentStudy) -> list[str]:
    """The grid's condition names, baseline first."""
    names = [grid_name(study.sweep.matching, lam) for lam in study.sweep.lambdas]
    return ([study.baseline] if study.sweep.include_baseline else []) + names


def _trial_label(trial: Any) -> str:
    return f"{(trial.config or {}).get('condition', 'trial')}_{trial.trial_id}"


def _init_ray(study: SentimentStudy) -> bool:
    import ray

    if ray.is_initialized():
        return False
    if study.ray.address:
        ray.init(address=study.ray.address, log_to_driver=True)
    else:
        ray.init(num_cpus=study.ray.num_cpus, num_gpus=study.ray.num_gpus, include_dashboard=False)
    return True


def _open_parent(client: Any, exp_id: str, study: SentimentStudy, paths: SentimentPaths, names: list[str]) -> str:
    from mlflow.entities import Param

    run = client.create_run(exp_id, run_name=f"{study.name}-sweep",
                            tags={"irr_ray.stage": "sentiment-sweep", "irr_ray.study": str(paths.root)})
    params = flatten({"train": config_dict(study.train), "sweep": config_dict(study.sweep),
                      "data": config_dict(study.data), "model": config_dict(study.model)})
    params["grid"] = ",".join(names)
    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def export_results(results: Any, paths: SentimentPaths, epochs: int, uri: str, exp_id: str,
                   parent: str) -> dict[str, dict[str, Any]]:
    """Close each trial's child run with its final status and export its last checkpoint to
    ``checkpoints/<condition>``; returns ``{condition: entry}``."""
    from irr_ray.train.checkpoint import export_checkpoint, read_trial_json
    from irr_ray.train.tracking import terminate_if_open, trial_status

    out = {}
    for result in results:
        condition = str((result.config or {}).get("condition"))
        metrics = dict(result.metrics or {})
        error = result.error is not None
        done = int(metrics.get("training_iteration", 0))
        status = trial_status(error, done, epochs)
        entry: dict[str, Any] = {"condition": condition, "status": status, "epochs_completed": done,
                                 "error": str(result.error) if error else None, "checkpoint": None,
                                 "trial_id": str(metrics.get("trial_id", ""))}
        if entry["trial_id"]:
            terminate_if_open(uri, exp_id, parent, entry["trial_id"], status)
        if result.checkpoint is not None and not error:
            dst = paths.checkpoints / condition
            with result.checkpoint.as_directory() as ckpt_dir:
                info = read_trial_json(ckpt_dir)
                final = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                export_checkpoint(ckpt_dir, dst, {**info, "metrics": final, "status": status,
                                                  "epochs_completed": done, "tracking_uri": uri})
            entry["checkpoint"] = str(dst)
            entry["mlflow_run_id"] = info.get("mlflow_run_id")
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
    from mlflow import MlflowClient
    from ray import tune

    from irr_ray.tracking.mlflow_utils import get_or_create_experiment, resolve_tracking_uri
    from irr_ray.train.tracking import KILLED, TrialRunStatusCallback, close_open_children
    from irr_ray.train.trainable import TrialContext, train_trial

    t0 = time.perf_counter()
    source = build(study, paths)  # 1
    names = grid(study)
    base = base_train_dict(study, source)
    experiment_path = paths.sweep / study.name
    if experiment_path.exists() and not resume:
        raise IrrRayError(f"a sweep already exists at {experiment_path}: pass --resume to continue it, "
                          "or use another --study-dir")
    paths.sweep.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(study.tracking.uri, paths.root)  # 2
    exp_id = get_or_create_experiment(study.tracking.experiment or study.name, uri, paths.mlflow_artifacts)
    client = MlflowClient(tracking_uri=uri)
    state_path = paths.sweep / f"{study.name}.mlflow.json"
    config_hash = stable_hash({"train": base, "grid": names, "data": config_dict(study.data)})
    if resume and state_path.is_file():
        import json

        state = json.loads(state_path.read_text())
        if state.get("config_hash") != config_hash:
            raise IrrRayError(f"the sweep config changed since {state_path} was written; resume needs the same settings")
        parent = state["parent_run_id"]
        client.update_run(parent, status="RUNNING")
    else:
        parent = _open_parent(client, exp_id, study, paths, names)
        write_json_atomic(state_path, {"parent_run_id": parent, "experiment_id": exp_id, "tracking_uri": uri,
                                       "config_hash": config_hash})

    started_ray = _init_ray(study)  # 3
    status = "FAILED"
    try:
        ctx = TrialContext(base_train=base, presets=condition_presets(study), data_dir=str(paths.data),
                           tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent,
                           threads=max(1, int(study.sweep.resources.cpu)),
                           tags={"irr_ray.study": str(paths.root)}, run_factory=RUN_FACTORY)
        resources = {"cpu": study.sweep.resources.cpu, "gpu": study.sweep.resources.gpu}
        trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx), resources)
        callback = TrialRunStatusCallback(uri, exp_id, parent, study.train.epochs, METRIC, verbose)
        if resume and tune.Tuner.can_restore(str(experiment_path)):  # 4
            tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"condition": tune.grid_search(names)},
                tune_config=tune.TuneConfig(metric=METRIC, mode="min",
                                            max_concurrent_trials=study.sweep.max_concurrent_trials,
                                            trial_name_creator=_trial_label, trial_dirname_creator=_trial_label),
                run_config=tune.RunConfig(
                    name=study.name, storage_path=str(paths.sweep), callbacks=[callback],
                    failure_config=tune.FailureConfig(max_failures=study.sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1 if verbose else 0),
            )
        results = tuner.fit()
        entries = export_results(results, paths, study.train.epochs, uri, exp_id, parent)  # 5
        close_open_children(uri, exp_id, parent, KILLED)
        failed = [c for c, e in entries.items() if e["checkpoint"] is None]
        if failed:
            raise IrrRayError(f"sweep trials without a model: {', '.join(failed)} (see {experiment_path})")
        models = {c: entries[c]["checkpoint"] for c in names}
        evals = evaluate_remote(study, paths, models)  # 6
        _log_child_evals(uri, entries, evals)
        report = evaluate_and_report(study, paths, models, results=evals, parent_run_id=parent, verbose=verbose)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        client.set_terminated(parent, status)
        if started_ray:
            import ray

            ray.shutdown()
    summary = {"parent_run_id": parent, "tracking_uri": uri, "experiment_path": str(experiment_path),
               "trials": entries, "wall_seconds": time.perf_counter() - t0, "table": report["rows"]}
    write_json_atomic(paths.sweep / f"{study.name}.summary.json", summary)
    return summary
