"""One sentiment condition's fine-tune on :class:`irr_ray.train.trainer.Trainer` — the same loop,
losses, class-balanced micro-batches, optimizer, schedule and checkpoints as the refusal study.

What differs is only the input and the per-epoch signals:

* **input**: raw review text, no chat template, no special tokens; a review longer than
  ``train.max_length`` keeps its *first* tokens (the beginning of a review, as GPT-2 LM fine-tunes
  on IMDB do). Class label 1 = positive plays the role of "harmful" in the matching loss, which
  only needs two classes. Rows are left-padded with position ids counted over real tokens
  (:meth:`irr_ray.train.data.PromptSet.collate`), so GPT-2's learned positions are right.
* **validation** (:class:`SentimentValidation`, on a fixed class-balanced slice of the train split):
  LM loss, both matching penalties on the masked-mean pool, the class-mean gap and a linear probe
  at the probe layer — no refusal or attack signals, which do not exist here.

:class:`SentimentRun` has the interface of :class:`irr_ray.train.run.TrainingRun` (``epoch``,
``finished``, ``run_epoch()``, ``evaluate()``, ``save()``, ``trainer``), so the single-condition
driver and the Tune trial treat both studies alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import TrialDoc
from irr_ray.core.losses import layer_penalty
from irr_ray.core.probes import probe_accuracy
from irr_ray.train.config import TrainConfig
from irr_ray.train.data import PromptSet
from irr_ray.train.run import TrainingRun
from irr_ray.train.single import train_resumable
from irr_ray.train.trainer import autocast, pool_layers

log = logging.getLogger(__name__)


def text_set(df: pd.DataFrame, tokenizer, max_length: int) -> PromptSet:
    """Raw reviews → :class:`PromptSet` (first ``max_length`` tokens, no special tokens), label 1 = positive."""
    texts = df["text"].tolist()
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [torch.tensor(t[:max_length] or [tokenizer.eos_token_id], dtype=torch.long) for t in enc]
    labels = torch.tensor(df["label"].to_numpy(), dtype=torch.long)
    return PromptSet(ids, labels, texts, int(tokenizer.pad_token_id))


class SentimentValidation:
    """Per-epoch signals on the fixed validation slice (one forward with hidden states)."""

    def __init__(self, cfg: TrainConfig, val: PromptSet, num_layers: int, device: str, dtype: torch.dtype):
        self.cfg = cfg
        self.device, self.dtype = device, dtype
        self.labels = val.labels
        self.batches = [val.collate(idx, device) for idx in val.batches(cfg.eval.batch_size)]
        self.probe_layer = min(num_layers, max(1, int(cfg.eval.probe_layer_frac * num_layers)))

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        pooled, loss_sum, n_tokens = [], 0.0, 0
        try:
            for b in self.batches:
                with autocast(self.device, self.dtype):
                    out = model(**b.model_inputs(), labels=b.lm_labels, output_hidden_states=True, use_cache=False)
                n = int((b.lm_labels[:, 1:] != -100).sum())
                loss_sum, n_tokens = loss_sum + float(out.loss) * n, n_tokens + n
                pooled.append(pool_layers(tuple(h.float() for h in out.hidden_states), b.attention_mask).cpu())
        finally:
            model.train(was_training)
        return self.metrics(torch.cat(pooled, 1), loss_sum / max(n_tokens, 1))

    def metrics(self, pooled: Tensor, lm_loss: float) -> dict[str, float]:
        cfg, labels = self.cfg, self.labels
        x = pooled[self.probe_layer].double()
        pos = labels == 1
        gap = float((x[pos].mean(0) - x[~pos].mean(0)).norm())
        spread = float(torch.cat([x[pos] - x[pos].mean(0), x[~pos] - x[~pos].mean(0)]).square().sum(-1).mean().sqrt())
        return {
            "eval/lm_loss": lm_loss,
            "eval/penalty_mean": float(layer_penalty(pooled, labels, "mean", cfg.mean_penalty, cfg.multi_layer).value),
            "eval/penalty_cov": float(layer_penalty(pooled, labels, "cov", cfg.cov_penalty, cfg.multi_layer).value),
            "eval/mean_gap": gap,
            "eval/mean_gap_rel": gap / spread if spread > 0 else float("inf"),
            "eval/probe_acc": probe_accuracy(x.float(), labels.numpy(), "linear", test_fraction=0.5, seed=cfg.seed),
        }


class SentimentRun(TrainingRun):
    """A sentiment fine-tune on the shared trainer: raw review text instead of chat prompts, and the
    sentiment validation (class-mean gap, probe) instead of the refusal one."""

    model_hint = "the sentiment source model (built local model or gpt2)"

    def load_examples(self, data_dir: str | Path) -> PromptSet:
        from irr_ray.sentiment.data import read_split

        return text_set(read_split(data_dir, "train"), self.tokenizer, self.cfg.max_length)

    def make_evaluator(self, teacher: nn.Module) -> SentimentValidation:
        return SentimentValidation(self.cfg, self.val_set, self.num_layers, self.device, self.dtype)


def _fingerprint(path: Path, record: str) -> str:
    """The build key recorded in ``path/record`` (data manifest, local model build), else the path:
    a rebuilt input with another config invalidates what was trained on it."""
    import json

    f = Path(path).expanduser() / record
    if f.is_file():
        return str(json.loads(f.read_text()).get("key", f.stat().st_mtime_ns))
    return str(path)


def train_condition(cfg: TrainConfig, data_dir: str | Path, out: str | Path, condition: str | None = None,
                    verbose: bool = True) -> TrialDoc:
    """Train one condition into the HF directory ``out`` (+ ``trial.json``); resumable per epoch.

    Returns the :class:`~irr_ray.contracts.TrialDoc` written to ``out/trial.json``. A finished ``out``
    with the same config and data is returned as is; an interrupted run resumes from ``.<out>.work``
    (the last finished epoch).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    config_hash = stable_hash({"config": config_dict(cfg), "data": _fingerprint(data_dir, "manifest.json"),
                               "model": _fingerprint(Path(cfg.model or ""), "build.json")})
    return train_resumable(lambda resume: SentimentRun(cfg, data_dir, resume_from=resume), cfg, out, config_hash,
                           condition, _describe_epoch, label=f"sentiment train [{condition}]", verbose=verbose)


def _describe_epoch(m: dict[str, Any]) -> str:
    return (f"loss={m['train/loss']:.4f} val lm={m['eval/lm_loss']:.4f} gap={m['eval/mean_gap']:.4f} "
            f"probe={m['eval/probe_acc']:.3f} ({m['time/train_s']:.1f}s)")
