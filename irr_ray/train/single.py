"""``irr-ray train``: one condition into one checkpoint directory, resumable.

While it runs, the last finished epoch lives in ``.<out>.work/`` (a full training checkpoint);
a rerun with the same config continues from there, and a finished ``<out>`` with the same
config hash is not retrained. ``epochs: 0`` (the ``baseline`` condition) exports the source
model unchanged, with its validation metrics.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import TrialDoc
from irr_ray.errors import IrrRayError
from irr_ray.train.checkpoint import TRIAL_JSON, export_checkpoint, read_trial_json
from irr_ray.train.config import TrainConfig
from irr_ray.train.run import TrainingRun
from irr_ray.utils.files import atomic_dir


def _same_config(path: Path, config_hash: str) -> bool:
    """``path`` holds a checkpoint of this config (a stale or foreign trial.json is not one)."""
    if not (path / TRIAL_JSON).is_file():
        return False
    try:
        return read_trial_json(path).config_hash == config_hash
    except IrrRayError:
        return False


def train_resumable(
    make_run: Callable[[Path | None], Any], cfg: TrainConfig, out: str | Path, config_hash: str,
    condition: str | None, describe_epoch: Callable[[dict[str, Any]], str], label: str = "train",
    verbose: bool = True, trial_extra: dict[str, Any] | None = None,
) -> TrialDoc:
    """The resumable epoch loop shared by every trainer (refusal study and sentiment).

    ``make_run(resume_from)`` builds a run object with ``epoch``, ``finished``, ``run_epoch()``,
    ``evaluate()``, ``save(dir, extra)`` and ``trainer.state`` (a :class:`~irr_ray.train.trainer.TrainState`). The last finished
    epoch is saved atomically to ``.<out>.work/``; the finished model is exported to ``out`` with
    ``trial.json`` (a :class:`TrialDoc`, returned); a finished ``out`` with the same ``config_hash``
    is returned as is.
    """
    out = Path(out).expanduser().resolve()
    work = out.parent / f".{out.name}.work"
    if _same_config(out, config_hash):
        if verbose:
            print(f"{label}: {out} is already trained with this config; nothing to do", flush=True)
        return read_trial_json(out)
    resume = work if _same_config(work, config_hash) else None
    run = make_run(resume)
    if verbose:
        state = f"resuming at epoch {run.epoch}" if resume else "starting"
        print(f"{label}: {state} on {run.device}", flush=True)
    extra = {"name": out.name, "config_hash": config_hash, "condition": condition}
    metrics = run.evaluate() if run.finished else {}
    if run.epoch == 0 and run.finished:  # epochs: 0 (baseline): export the source model with its metrics
        with atomic_dir(work) as tmp:
            run.save(tmp, extra={**extra, "metrics": metrics})
    while not run.finished:
        metrics = run.run_epoch()
        if verbose:
            print(f"{label}: epoch {run.epoch}/{cfg.epochs} {describe_epoch(metrics)}", flush=True)
        with atomic_dir(work) as tmp:
            run.save(tmp, extra={**extra, "metrics": metrics})
    trial = TrialDoc(name=out.name, condition=condition, config=config_dict(cfg), config_hash=config_hash,
                     source_model=cfg.model, metrics=metrics, epochs_completed=run.epoch,
                     degenerate_steps=run.trainer.state.degenerate_record(), **(trial_extra or {}))
    export_checkpoint(work, out, trial)
    shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"{label}: wrote {out}", flush=True)
    return trial


def _describe_epoch(m: dict[str, Any]) -> str:
    return (f"loss={m['train/loss']:.4f} objective={m['objective']:.4f} refusal harmful/harmless="
            f"{m['eval/refusal_harmful']:.3f}/{m['eval/refusal_harmless']:.3f} "
            f"({m['time/train_s']:.1f}s + eval {m['time/eval_s']:.1f}s)")


def train_to_dir(cfg: TrainConfig, data_dir: str | Path, out: str | Path, condition: str | None = None,
                 verbose: bool = True) -> TrialDoc:
    """Train ``cfg`` on ``<data_dir>/train.parquet`` and export the model to ``out``; returns its trial.json."""
    config_hash = stable_hash({"config": config_dict(cfg), "data": str(Path(data_dir).resolve())})
    return train_resumable(lambda resume: TrainingRun(cfg, data_dir, resume_from=resume), cfg, out, config_hash,
                           condition, _describe_epoch, verbose=verbose)
