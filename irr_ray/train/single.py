"""``irr-ray train``: one condition into one checkpoint directory, resumable.

While it runs, the last finished epoch lives in ``.<out>.work/`` (a full training checkpoint);
a rerun with the same config continues from there, and a finished ``<out>`` with the same
config hash is not retrained. ``epochs: 0`` (the ``baseline`` condition) exports the source
model unchanged, with its validation metrics.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from irr_ray.config import config_dict, stable_hash
from irr_ray.train.checkpoint import TRIAL_JSON, export_checkpoint, read_trial_json
from irr_ray.train.config import TrainConfig
from irr_ray.train.run import TrainingRun
from irr_ray.utils.files import atomic_dir


def _same_config(path: Path, config_hash: str) -> bool:
    return (path / TRIAL_JSON).is_file() and read_trial_json(path).get("config_hash") == config_hash


def train_to_dir(cfg: TrainConfig, data_dir: str | Path, out: str | Path, condition: str | None = None,
                 verbose: bool = True) -> dict[str, Any]:
    """Train ``cfg`` on ``<data_dir>/train.parquet`` and export the model to ``out``; returns trial.json."""
    out = Path(out).expanduser().resolve()
    work = out.parent / f".{out.name}.work"
    config_hash = stable_hash({"config": config_dict(cfg), "data": str(Path(data_dir).resolve())})
    if _same_config(out, config_hash):
        if verbose:
            print(f"train: {out} is already trained with this config; nothing to do", flush=True)
        return read_trial_json(out)
    resume = work if _same_config(work, config_hash) else None
    run = TrainingRun(cfg, data_dir, resume_from=resume)
    if verbose:
        state = f"resuming at epoch {run.epoch}" if resume else "starting"
        print(f"train: {state}; {len(run.train_set)} train / {len(run.val_set)} val prompts, "
              f"{run.trainer.steps_per_epoch} steps/epoch on {run.device}", flush=True)
    extra = {"config_hash": config_hash, "condition": condition, "source_model": cfg.model}
    metrics = run.evaluate() if cfg.epochs == 0 else {}
    if cfg.epochs == 0:
        with atomic_dir(work) as tmp:
            run.save(tmp, extra={**extra, "metrics": metrics})
    while not run.finished:
        metrics = run.run_epoch()
        if verbose:
            print(f"train: epoch {run.epoch}/{cfg.epochs} loss={metrics['train/loss']:.4f} "
                  f"objective={metrics['objective']:.4f} refusal harmful/harmless="
                  f"{metrics['eval/refusal_harmful']:.3f}/{metrics['eval/refusal_harmless']:.3f} "
                  f"({metrics['time/train_s']:.1f}s + eval {metrics['time/eval_s']:.1f}s)", flush=True)
        with atomic_dir(work) as tmp:
            run.save(tmp, extra={**extra, "metrics": metrics})
    trial = {"name": out.name, "condition": condition, "config": config_dict(cfg), "config_hash": config_hash,
             "source_model": cfg.model, "metrics": metrics, "epochs_completed": run.epoch,
             "stopped_early": False, "status": "FINISHED", "mlflow_run_id": None,
             "degenerate_steps": run.trainer.state.degenerate_steps}
    export_checkpoint(work, out, trial)
    shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"train: wrote {out}", flush=True)
    return trial
