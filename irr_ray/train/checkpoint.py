"""Checkpoints: Hugging Face model directories that every stage can load, plus training state.

A *training* checkpoint (what a trial reports to Tune each epoch, and what ``irr-ray train``
keeps while it runs) is an HF directory — ``config.json``, ``model.safetensors``, the tokenizer
with its chat template — plus ``trainer_state.json`` (epoch, step, degenerate steps),
``optimizer.pt`` (AdamW and scheduler state; written and read by irr-ray only, loaded with
``weights_only=True``), ``defense.pt`` with an ablation defense (its refusal directions and
activation buffers, :mod:`irr_ray.train.defenses`) and ``trial.json``. An *exported* checkpoint drops the optimizer state:
``AutoModelForCausalLM.from_pretrained(dir)`` + ``trial.json`` (config, final metrics, MLflow
run id, whether ASHA stopped it early). ``trial.json`` is a :class:`irr_ray.contracts.TrialDoc` in
both kinds of checkpoint; the training progress lives in ``trainer_state.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.contracts import TrialDoc
from irr_ray.train.trainer import Trainer, TrainState
from irr_ray.utils.files import atomic_dir, write_json_atomic

TRIAL_JSON = "trial.json"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"
DEFENSE_STATE = "defense.pt"  # ablation defenses: current refusal directions and the activation buffers
TRAINING_ONLY = (TRAINER_STATE, OPTIMIZER_STATE, DEFENSE_STATE)


def save_model_dir(path: str | Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Weights as safetensors, config, generation config and tokenizer (incl. chat template)."""
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def save_training_checkpoint(path: str | Path, trainer: Trainer, tokenizer: PreTrainedTokenizerBase,
                             info: TrialDoc) -> None:
    """Everything needed to continue ``trainer`` exactly at its next epoch, into ``path``."""
    path = Path(path)
    save_model_dir(path, trainer.model, tokenizer)  # type: ignore[arg-type]
    torch.save({"optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict()},
               path / OPTIMIZER_STATE)
    if trainer.defense is not None and trainer.defense.estimator.directions is not None:
        torch.save(trainer.defense.estimator.state_dict(), path / DEFENSE_STATE)
    write_json_atomic(path / TRAINER_STATE, trainer.state.to_dict())
    info.write(path / TRIAL_JSON)


def read_trial_json(path: str | Path) -> TrialDoc:
    """The ``trial.json`` of checkpoint directory ``path`` (one-line error if missing or stale)."""
    return TrialDoc.read(Path(path) / TRIAL_JSON)


def restore_training_state(path: str | Path, trainer: Trainer) -> None:
    """Load optimizer, scheduler and progress saved by :func:`save_training_checkpoint` (the
    weights were loaded with the model)."""
    path = Path(path)
    state = torch.load(path / OPTIMIZER_STATE, map_location=trainer.device, weights_only=True)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.state = TrainState(**json.loads((path / TRAINER_STATE).read_text()))
    if trainer.defense is not None and (path / DEFENSE_STATE).is_file():
        trainer.defense.estimator.load_state_dict(torch.load(path / DEFENSE_STATE, weights_only=True))


def export_checkpoint(src: str | Path, dst: str | Path, trial: TrialDoc) -> Path:
    """Copy the model directory ``src`` to ``dst`` without training-only state, with ``trial.json``.
    Atomic: ``dst`` appears complete or not at all."""
    src, dst = Path(src), Path(dst)
    with atomic_dir(dst) as tmp:
        for f in src.iterdir():
            if f.name in TRAINING_ONLY or f.name == TRIAL_JSON:
                continue
            if f.is_dir():
                shutil.copytree(f, tmp / f.name)
            else:
                shutil.copy2(f, tmp / f.name)
        trial.write(tmp / TRIAL_JSON)
    return dst
