"""The method's fine-tune of one condition, as a small loop of overridable steps (TRL style).

Per micro-batch (class-balanced, or the method's shuffled stream: ``train.batching``) of prompt-only chat inputs (left-padded, ``B = micro_batch``)::

    loss = LM(prompt tokens)                                   labels = input_ids, padding ignored
         + λ_mean · P_mean(pooled)          if match = mean     P over hidden_states[1:] (or the last)
         + λ_cov  · P_cov(pooled)           if match = cov      ‖ΔC‖²_F/H² through n×n Gram matrices
         + kd_lambda · T² · KL(teacher ‖ student)               next-token distribution, last position
                                                                (+ the teacher's reply positions: kd_reply_tokens)
         + refat_lambda · KD(ablated copies of harmful rows)    ablation = refat | random

``pooled`` [L+1, B, D] is every hidden state averaged over the tokens the sample's mixed readout
selects (one [B, T] weight matrix per step, one batched matmul per layer). Reply KD
(:mod:`irr_ray.train.replies`) teacher-forces each prompt with the teacher's greedy reply; the
ablation defenses (:mod:`irr_ray.train.defenses`: ReFAT, DeepRefusal) append ablated copies of
some harmful rows to the same forward and re-estimate the refusal directions from the clean rows'
activations at optimizer-step boundaries (:meth:`Trainer.before_step`). Gradients of
``grad_accum`` micro-batches are averaged, clipped to ``max_grad_norm`` and applied by AdamW
(weight decay on matrices only, as Hugging Face does) under a linear warm-up/decay schedule.
Compute is bf16 autocast on CUDA (fp32 master weights), fp32 on CPU.

The teacher is the frozen source model. Its last-position logits are a pure function of the
prompt, so they are computed once (:func:`teacher_logits`) and indexed per batch every epoch:
the KD term costs a [B, V] KL, not a second forward pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import get_linear_schedule_with_warmup

from irr_ray.core.losses import PenaltyResult, kd_loss, layer_penalty
from irr_ray.core.readouts import mixed_readout_weights, sample_readout_plan
from irr_ray.train.config import TrainConfig
from irr_ray.train.data import Batch, PromptSet, epoch_batches
from irr_ray.train.defenses import AblationDefense
from irr_ray.train.replies import ReplyTargets, reply_kd

log = logging.getLogger(__name__)


def compute_dtype(cfg: TrainConfig, device: str) -> torch.dtype:
    """``auto``: bf16 on CUDA, fp32 on CPU."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32


def autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast around forward passes (weights stay fp32); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def pool_layers(hidden_states: tuple[Tensor, ...], weights: Tensor) -> Tensor:
    """Mean of each layer's ``[B, T, D]`` over the tokens in 0/1 ``weights [B, T]`` → ``[L+1, B, D]``."""
    w = weights.to(hidden_states[0].dtype)
    w = (w / w.sum(dim=-1, keepdim=True)).unsqueeze(1)  # [B, 1, T]
    return torch.stack([torch.bmm(w, h).squeeze(1) for h in hidden_states])


@torch.no_grad()
def teacher_logits(model: nn.Module, prompts: PromptSet, batch_size: int, device: str,
                   dtype: torch.dtype) -> Tensor:
    """Next-token logits at the last prompt position for every prompt, ``[N, V]`` on the CPU
    (stored in the compute dtype). Run with the *source* model: these are the KD targets."""
    was_training = model.training
    model.eval()
    rows = []
    for idx in prompts.batches(batch_size):
        batch = prompts.collate(idx, device)
        with autocast(device, dtype):
            out = model(**batch.model_inputs(), use_cache=False, logits_to_keep=1)
        rows.append(out.logits[:, -1, :].to("cpu", dtype))
    model.train(was_training)
    return torch.cat(rows)


@dataclass
class TrainState:
    """Progress that a checkpoint restores: completed epochs, optimizer steps, how many
    micro-batches had a degenerate matching penalty (a class with too few samples) out of how many
    micro-batches were trained (``micro_steps``: the denominator of the degenerate fraction; 0 in
    a checkpoint written before it was counted) and how many refusal-direction estimates the
    ablation defenses made."""

    epoch: int = 0
    global_step: int = 0
    degenerate_steps: int = 0
    refat_estimates: int = 0
    micro_steps: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def degenerate_record(self) -> dict[str, int]:
        """``trial.json``'s ``degenerate_steps``: ``count`` micro-batches whose matching statistic
        was undefined out of ``steps`` micro-batches trained (the fraction is count / steps)."""
        return {"count": self.degenerate_steps, "steps": self.micro_steps}


class Trainer:
    """One condition's fine-tune. Override :meth:`compute_loss` (or its parts) to change the method."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, train_set: PromptSet,
                 teacher: Tensor | None, device: str, replies: ReplyTargets | None = None) -> None:
        if cfg.uses_teacher and teacher is None:
            raise ValueError("kd_lambda > 0 or an ablation defense needs the teacher's cached logits")
        if cfg.uses_reply_kd and replies is None:
            raise ValueError("kd_reply_tokens >= 2 needs the teacher's replies (irr_ray.train.replies.teacher_replies)")
        self.cfg = cfg
        self.model = model
        self.train_set = train_set
        self.teacher = teacher
        self.replies = replies if cfg.uses_reply_kd else None
        self.device = device
        self.dtype = compute_dtype(cfg, device)
        self.defense = AblationDefense(cfg, model, device) if cfg.uses_ablation else None
        self.labels = train_set.labels.numpy()
        self.micro_per_epoch = len(self.epoch_micro_batches(0))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.optimizer = self.create_optimizer()
        self.scheduler = self.create_scheduler(self.steps_per_epoch * max(cfg.epochs, 1))
        self.state = TrainState()

    # ------------------------------------------------------------------ setup

    def create_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; no weight decay on biases and norm gains (1-d parameters)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": self.cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        fused = str(self.device).startswith("cuda")
        return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=fused)

    def create_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        warmup = int(round(self.cfg.warmup_ratio * total_steps))
        return get_linear_schedule_with_warmup(self.optimizer, warmup, total_steps)

    # ------------------------------------------------------------------ loss pieces

    def forward(self, batch: Batch, clean: int | None = None, masks: Tensor | None = None) -> Any:
        """One forward of ``batch``; its rows from ``clean`` on are ablated copies (gated by
        ``masks``, :mod:`irr_ray.train.defenses`) that take no LM loss."""
        need_hidden = self.cfg.match != "none" or (self.defense is not None and self.defense.records)
        labels = batch.lm_labels
        if clean is not None and clean < labels.shape[0]:
            labels = labels.clone()
            labels[clean:] = -100
        ablate = self.defense.ablation(masks) if masks is not None and self.defense is not None \
            else contextlib.nullcontext()
        with ablate, autocast(self.device, self.dtype):
            return self.model(**batch.model_inputs(), labels=labels, output_hidden_states=need_hidden,
                              use_cache=False)

    def pooled(self, hidden_states: tuple[Tensor, ...], batch: Batch, generator: torch.Generator) -> Tensor:
        """Mixed-readout pooling of every hidden state over the prompt tokens, ``[L+1, B, D]``."""
        r = self.cfg.readout
        mask = batch.readout_mask
        plan = sample_readout_plan(mask, r.last_ratio, r.random_ratio, r.chat_ratio, generator)
        weights = mixed_readout_weights(mask, plan, r.random_fraction, r.chat_offsets)
        return pool_layers(hidden_states, weights)

    def matching_penalty(self, out: Any, batch: Batch, generator: torch.Generator) -> PenaltyResult | None:
        cfg = self.cfg
        if cfg.match == "none":
            return None
        kind = cfg.mean_penalty if cfg.match == "mean" else cfg.cov_penalty
        rows = batch.input_ids.shape[0]
        hidden = tuple(h[:rows] for h in out.hidden_states)  # the clean rows (ablated copies follow)
        return layer_penalty(self.pooled(hidden, batch, generator), batch.labels, cfg.match, kind, cfg.multi_layer)

    def kd_value(self, logits: Tensor, batch: Batch, reply_targets: Tensor | None) -> Tensor:
        """``T²·KL`` at the last prompt position (+ the mean over valid reply positions, reply KD) of
        ``logits [B, W, V]`` against the teacher, for the rows of ``batch``."""
        col = batch.last_prompt_column
        target = self.teacher[batch.index.cpu()].to(self.device, non_blocking=True)  # type: ignore[index]
        kd = kd_loss(logits[:, col, :], target, self.cfg.kd_T)
        if reply_targets is not None and batch.reply_valid is not None:
            r = reply_targets.shape[1]  # R − 1: positions col+1 … col+R−1 predict reply tokens 1 … R−1
            kd = kd + reply_kd(logits[:, col + 1:col + 1 + r], reply_targets, batch.reply_valid[:, 1:], self.cfg.kd_T)
        return kd

    def kd_term(self, out: Any, batch: Batch, reply_targets: Tensor | None = None) -> Tensor | None:
        if not self.cfg.uses_kd or self.teacher is None:  # __init__ requires the cache when KD is on
            return None
        return self.kd_value(out.logits[: batch.input_ids.shape[0]], batch, reply_targets)

    def before_step(self) -> None:
        """At an optimizer-step boundary: the first refusal-direction estimate (before step 1) and
        the re-estimates every ``refat_interval`` steps (ablation defenses only)."""
        d = self.defense
        if d is None:
            return
        step = self.state.global_step
        if d.estimator.directions is None:
            d.estimator.initialize(self.model, self.train_set, self.cfg.teacher_batch_size, self.device,
                                    self.dtype, self.cfg.seed)
        elif self.cfg.refat_interval and step % self.cfg.refat_interval == 0:
            d.estimator.estimate()
        else:
            return
        self.state.refat_estimates += 1

    def compute_loss(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one micro-batch and its detached parts (for logging)."""
        if self.replies is not None:
            batch = self.replies.extend(batch)
        clean = batch.input_ids.shape[0]
        full, copies, masks = batch, None, None
        if self.defense is not None:
            if self.defense.estimator.directions is None:
                self.before_step()
            host_labels = self.labels[batch.index.cpu().numpy()]
            copies = self.defense.choose(host_labels, generator)
            if len(copies):
                rows = torch.cat([torch.arange(clean), copies]).to(self.device)
                full = batch.rows(rows)
                masks = self.defense.masks(full, clean, generator)
        out = self.forward(full, clean, masks)
        loss = out.loss
        parts = {"train/lm_loss": out.loss.detach()}
        if self.defense is not None and self.defense.records:
            self.defense.record(out.hidden_states, clean, batch.last_prompt_column, host_labels)
        reply_targets = self.replies.targets(batch) if self.replies is not None else None
        penalty = self.matching_penalty(out, batch, generator)
        if penalty is not None:
            if penalty.degenerate:
                if self.state.degenerate_steps == 0:
                    log.warning("degenerate matching penalty: a micro-batch with %d harmful / %d harmless prompts "
                                "defines no %s statistic (counted in train/degenerate_steps)",
                                penalty.n_pos, penalty.n_neg, self.cfg.match)
                self.state.degenerate_steps += 1
            lam = self.cfg.lambda_mean if self.cfg.match == "mean" else self.cfg.lambda_cov
            loss = loss + lam * penalty.value
            parts["train/penalty"] = penalty.value.detach()
        kd = self.kd_term(out, batch, reply_targets)
        if kd is not None:
            loss = loss + self.cfg.kd_lambda * kd
            parts["train/kd"] = kd.detach()
        if self.defense is not None:
            refusal = out.logits.new_zeros(())
            if copies is not None and len(copies):
                copy_batch = full.rows(torch.arange(clean, full.input_ids.shape[0], device=self.device))
                copy_targets = None if reply_targets is None else reply_targets[copies.to(reply_targets.device)]
                refusal = self.kd_value(out.logits[clean:], copy_batch, copy_targets)
                loss = loss + self.cfg.refat_lambda * refusal
            parts["train/refusal_ablated"] = refusal.detach()
            parts["train/ablated_rows"] = torch.tensor(float(len(copies) if copies is not None else 0))
        parts["train/loss"] = loss.detach()
        return loss, parts

    # ------------------------------------------------------------------ loop

    def epoch_micro_batches(self, epoch: int) -> list[np.ndarray]:
        """Row indices of the epoch's micro-batches (``train.batching``: balanced or shuffled)."""
        return epoch_batches(self.labels, self.cfg.micro_batch, self.cfg.seed, epoch, self.cfg.batching)

    def windows(self, epoch: int) -> Iterator[list[np.ndarray]]:
        """The epoch's micro-batches grouped into optimizer steps of ``grad_accum``."""
        micro = self.epoch_micro_batches(epoch)
        for i in range(0, len(micro), self.cfg.grad_accum):
            yield micro[i:i + self.cfg.grad_accum]

    def optimizer_step(self) -> Tensor:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        return grad_norm.detach()

    def train_epoch(self) -> dict[str, float]:
        """One pass over the class-balanced batches of epoch ``state.epoch``; returns mean metrics.

        Metrics stay on the device until the epoch ends (one host sync per epoch, not per step).
        """
        epoch = self.state.epoch
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        self.model.train()
        sums: dict[str, list[Tensor]] = defaultdict(list)
        degenerate_before, micro_before = self.state.degenerate_steps, self.state.micro_steps
        for window in self.windows(epoch):
            self.before_step()
            for idx in window:
                batch = self.train_set.collate(idx, self.device)
                loss, parts = self.compute_loss(batch, generator)
                self.state.micro_steps += 1
                (loss / len(window)).backward()
                for key, value in parts.items():
                    sums[key].append(value.float())
            sums["train/grad_norm"].append(self.optimizer_step().float())
        self.state.epoch += 1
        metrics = {k: float(torch.stack(v).mean()) for k, v in sums.items()}
        metrics["train/lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["train/degenerate_steps"] = float(self.state.degenerate_steps - degenerate_before)
        metrics["train/micro_batches"] = float(self.state.micro_steps - micro_before)
        return metrics
