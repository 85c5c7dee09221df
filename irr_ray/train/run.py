"""One fine-tune assembled: model, tokenised data, teacher cache, trainer and evaluator.

Shared by ``irr-ray train`` (one condition into one directory) and the Tune trainable (one
trial). Steps, in order:

1. tokenizer and model (fp32 master weights) from the source model — or from a training
   checkpoint when resuming;
2. ``train.parquet`` → tokenised prompts; a fixed class-balanced validation slice held out;
   optionally a class-balanced cap on the training rows;
3. the frozen teacher's last-position logits, once: for the validation slice always (KD KL
   metric, the source model's K=0 reference) and for every training prompt when a term has the
   teacher as target (KD, an ablation defense). With reply KD also its greedy replies to every
   training prompt and its logits along them (:mod:`irr_ray.train.replies`; kept as a frozen copy
   of the teacher instead when they exceed ``kd_reply_cache_mb``). The teacher *is* the source
   model, so a fresh run reads them off the student before its first step; a resumed run loads
   the source model for this pass and frees it;
4. :class:`~irr_ray.train.trainer.Trainer` (restored from the checkpoint if any) and
   :class:`~irr_ray.train.evaluation.Evaluator`.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.config import config_dict
from irr_ray.contracts import TrialDoc
from irr_ray.errors import ConfigError
from irr_ray.models.families import get_layout
from irr_ray.models.loading import default_device, load_tokenizer
from irr_ray.train.checkpoint import restore_training_state, save_training_checkpoint
from irr_ray.train.config import TrainConfig
from irr_ray.train.data import PromptSet, balanced_subsample, load_split, split_validation
from irr_ray.train.evaluation import Evaluator
from irr_ray.train.replies import ReplyTargets, teacher_replies
from irr_ray.train.trainer import Trainer, compute_dtype, teacher_logits

log = logging.getLogger(__name__)


def load_master_model(path: str | Path, device: str) -> PreTrainedModel:
    """Causal LM in float32 (master weights; compute precision comes from autocast)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
    return model.to(device)


class TrainingRun:
    """A fine-tune ready to run epoch by epoch (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, data_dir: str | Path, resume_from: str | Path | None = None) -> None:
        if not cfg.model:
            raise ConfigError(f"train.model is not set: {self.model_hint}")
        self.cfg = cfg
        self.device = cfg.device or default_device()
        self.dtype = compute_dtype(cfg, self.device)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_master_model(resume_from or cfg.model, self.device)
        self.num_layers = get_layout(self.model).num_layers

        examples = self.load_examples(data_dir)
        labels = examples.labels.numpy()
        train_idx, val_idx = split_validation(labels, cfg.eval.n_per_class, cfg.seed)
        if cfg.max_train_samples is not None and cfg.max_train_samples < len(train_idx):
            train_idx = train_idx[balanced_subsample(labels[train_idx], cfg.max_train_samples, cfg.seed)]
        self.train_set = examples.subset(train_idx)
        self.val_set = examples.subset(val_idx)

        self.teacher_passes = 0
        teacher = self.model if resume_from is None else load_master_model(cfg.model, self.device)
        self.evaluator = self.make_evaluator(teacher)
        teacher_train = self._teacher(teacher, self.train_set) if cfg.uses_teacher else None
        replies = self._replies(teacher) if cfg.uses_reply_kd else None
        if teacher is not self.model:
            del teacher
            gc.collect()

        self.trainer = Trainer(cfg, self.model, self.train_set, teacher_train, self.device, replies=replies)
        if resume_from is not None:
            restore_training_state(resume_from, self.trainer)
        self.setup_seconds = time.perf_counter() - t0

    # What a subclass (another task on the same trainer, e.g. irr_ray.sentiment) replaces:
    model_hint = "give the source model directory (or study source_model)"

    def load_examples(self, data_dir: str | Path) -> PromptSet:
        """The training split as a PromptSet (chat-template prompts, label 1 = harmful)."""
        return PromptSet.from_frame(load_split(data_dir, "train"), self.tokenizer, self.cfg.max_length)

    def make_evaluator(self, teacher: torch.nn.Module):
        """Per-epoch validation; ``teacher`` is the frozen source model (KD KL on the validation slice)."""
        teacher_val = self._teacher(teacher, self.val_set)
        _, refusal_ids = refusal_token_ids(self.model, self.tokenizer, self.cfg.eval.refusal_tokens)
        evaluator = Evaluator(self.cfg, self.val_set, teacher_val, refusal_ids, self.num_layers, self.device,
                              self.dtype)
        evaluator.record_source_replies(teacher, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id or 0)
        return evaluator

    def _replies(self, teacher: torch.nn.Module) -> ReplyTargets:
        """The teacher's greedy replies to the training prompts (+ cached logits, or a frozen copy)."""
        replies = teacher_replies(teacher, self.train_set, self.cfg.kd_reply_tokens, self.cfg.teacher_batch_size,
                                  self.device, self.dtype, self.tokenizer.eos_token_id, self.cfg.kd_reply_cache_mb)
        if replies.logits is None:
            frozen = copy.deepcopy(teacher) if teacher is self.model else teacher
            replies.teacher = frozen.eval().requires_grad_(False)
        return replies

    def _teacher(self, model: torch.nn.Module, prompts: PromptSet) -> torch.Tensor:
        self.teacher_passes += 1
        return teacher_logits(model, prompts, self.cfg.teacher_batch_size, self.device, self.dtype)

    @property
    def epoch(self) -> int:
        return self.trainer.state.epoch

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, then evaluate; metrics incl. timings and the degenerate-step count."""
        t0 = time.perf_counter()
        metrics = self.trainer.train_epoch()
        t1 = time.perf_counter()
        metrics.update(self.evaluator(self.model))
        t2 = time.perf_counter()
        metrics.update({
            "epoch": float(self.epoch),
            "degenerate_steps_total": float(self.trainer.state.degenerate_steps),
            "micro_steps_total": float(self.trainer.state.micro_steps),
            "time/train_s": t1 - t0,
            "time/eval_s": t2 - t1,
            "time/eval_frac": (t2 - t1) / max(t1 - t0, 1e-9),
        })
        return metrics

    def evaluate(self) -> dict[str, float]:
        metrics = self.evaluator(self.model)
        metrics["epoch"] = float(self.epoch)
        return metrics

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """A training checkpoint in ``path``; ``extra`` holds :class:`~irr_ray.contracts.TrialDoc`
        fields (``name``, ``condition``, ``metrics``, MLflow ids, ``config_hash``, …)."""
        fields: dict[str, Any] = {"name": Path(path).name, "condition": None, "source_model": self.cfg.model,
                                  "metrics": {}, "degenerate_steps": self.trainer.state.degenerate_record()}
        doc = TrialDoc(config=config_dict(self.cfg), epochs_completed=self.epoch, **{**fields, **(extra or {})})
        save_training_checkpoint(path, self.trainer, self.tokenizer, doc)
