"""The Tune function trainable: one trial = one fine-tune, one ``tune.report`` per epoch.

The trial's Tune config is the sampled point (``condition`` and the dotted train knobs it uses);
the static context (the typed base config and each condition's typed config, the run class,
absolute data dir, MLflow coordinates) arrives through ``tune.with_parameters``. The trial's
:class:`~irr_ray.train.config.TrainConfig` is its condition's config with the sampled knobs
applied (:meth:`TrialContext.train_config`). Each epoch the trial logs its metrics to its MLflow child run and
reports them to Tune together with a training checkpoint (HF model dir + optimizer state +
``trial.json``). A restarted trial (worker crash, ``max_failures``) or a resumed sweep loads
``tune.get_checkpoint()`` and continues at the next epoch, in the same MLflow run; the reported
``resumed_from_epoch`` says where it picked up (0 = fresh start).

Fault injection for tests (no effect unless set): when the *driver* runs with
``IRR_RAY_FAULT_EXIT_AT_EPOCH=N`` and ``IRR_RAY_FAULT_MARKER=/abs/file`` in its environment
(handed to trials in :class:`TrialContext`), the first trial about to start epoch N + 1 (after
reporting N) that manages to create the marker file (JSON: trial id, pid, epoch) kills its own
worker process with ``os._exit``. Tune only lets a trial past ``tune.report`` when it continues the
trial, so the fault never hits a trial ASHA has just stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ray import tune

from irr_ray.config import config_dict, flatten
from irr_ray.tracking.names import CONDITION_TAG
from irr_ray.train.config import TrainConfig
from irr_ray.train.run import TrainingRun
from irr_ray.train.tracking import FAILED, FINISHED, TrialRun

FAULT_EPOCH_ENV = "IRR_RAY_FAULT_EXIT_AT_EPOCH"
FAULT_MARKER_ENV = "IRR_RAY_FAULT_MARKER"
FAULT_ENVS = (FAULT_EPOCH_ENV, FAULT_MARKER_ENV)


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares. All paths are absolute (trials run inside Ray's session dir)."""

    base: TrainConfig
    conditions: dict[str, TrainConfig]  # condition name -> base ⊕ its preset (validated on the driver)
    data_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    fault: dict[str, str] = field(default_factory=dict)
    # The run a trial drives: any class with TrainingRun's interface (``cls(cfg, data_dir,
    # resume_from=None)``, ``epoch``, ``finished``, ``run_epoch()``, ``save()``), e.g. the sentiment
    # study's SentimentRun (raw text, no chat template). Pickled by reference.
    run_cls: type = TrainingRun

    @staticmethod
    def fault_from_env() -> dict[str, str]:
        return {k: os.environ[k] for k in FAULT_ENVS if os.environ.get(k)}

    def train_config(self, sampled: dict[str, Any]) -> TrainConfig:
        """The sampled condition's typed config (the base without one) with the other sampled knobs."""
        knobs = {k: v for k, v in sampled.items() if k != "condition"}
        start = self.conditions[sampled["condition"]] if "condition" in sampled else self.base
        return start.with_knobs(knobs) if knobs else start


def _maybe_inject_fault(fault: dict[str, str], completed_epochs: int, trial_id: str) -> None:
    target, marker = fault.get(FAULT_EPOCH_ENV), fault.get(FAULT_MARKER_ENV)
    if not target or not marker or completed_epochs != int(target):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, json.dumps({"trial_id": trial_id, "pid": os.getpid(), "after_epoch": completed_epochs}).encode())
    os.close(fd)
    os._exit(17)


def train_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Run one trial (see the module docstring)."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, ctx.threads))
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per trial start floods the driver's log
    cfg = ctx.train_config(config)
    tune_ctx = tune.get_context()
    trial_id, trial_name = tune_ctx.get_trial_id(), tune_ctx.get_trial_name()
    tracker = TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id)
    params = {**flatten(config_dict(cfg)), **{f"sampled.{k}": v for k, v in config.items()}}
    run_id = tracker.open(trial_id, trial_name, params,
                          tags={CONDITION_TAG: str(config.get("condition", cfg.match)), **ctx.tags})
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as ckpt_dir:
                run = ctx.run_cls(cfg, ctx.data_dir, resume_from=Path(ckpt_dir))
        else:
            run = ctx.run_cls(cfg, ctx.data_dir)
        resumed_from = run.epoch
        info = {"name": trial_name, "trial_id": trial_id, "mlflow_run_id": run_id, "sampled": config,
                "condition": config.get("condition"), "tracking_uri": ctx.tracking_uri}
        while not run.finished:
            _maybe_inject_fault(ctx.fault, run.epoch, trial_id)
            metrics = run.run_epoch()
            metrics["resumed_from_epoch"] = float(resumed_from)
            tracker.log_metrics(metrics, step=run.epoch)
            with tempfile.TemporaryDirectory(prefix="irr-ray-ckpt-") as tmp:
                run.save(tmp, extra={**info, "metrics": metrics})
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    except Exception:
        tracker.close(FAILED)
        raise
    tracker.close(FINISHED)
