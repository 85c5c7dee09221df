"""Study dataset → tokenised prompt sets → class-balanced micro-batches.

Contract (ARCHITECTURE.md, "Study dataset"; the schema is :data:`irr_ray.data.split.SCHEMA`):
``<data>/train.parquet`` with at least ``prompt`` (str) and ``prompt_harm_label`` (``harmful`` |
``unharmful``). The trainer sees prompts only, rendered by the model's chat template with the
generation prompt; label 1 = harmful.

Batches are class-balanced: every micro-batch holds ``micro_batch / 2`` prompts of each class,
so the class means (≥ 1 per class) and unbiased class covariances (≥ 2 per class) the matching
loss compares are defined at every step. Each epoch reshuffles both classes with a seed derived
from ``(seed, epoch)``, so a trial resumed at an epoch boundary sees the same batches.
``batching: shuffled`` (:func:`shuffled_batches`) is the method's own convention instead: one
seeded permutation of both classes per epoch cut into consecutive micro-batches, so a micro-batch
may hold fewer than two (or no) prompts of a class and its statistics are undefined — the trainer
counts those as degenerate steps. :func:`epoch_batches` picks by ``TrainConfig.batching``.
The validation slice is a fixed, seeded, class-balanced subset of ``train.parquet`` held out of
training — never ``holdout.parquet``, which belongs to the final evaluation and attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from irr_ray.errors import DataValidationError
from irr_ray.models.chat import format_chat

LABELS = {"harmful": 1, "unharmful": 0}
REQUIRED_COLUMNS = ("prompt", "prompt_harm_label")


def load_split(data_dir: str | Path, split: str = "train") -> pd.DataFrame:
    """Read ``<data_dir>/<split>.parquet`` and validate the columns the trainer needs."""
    path = Path(data_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataValidationError(f"{path} not found: run `irr-ray data` first or pass --data-dir")
    df = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
    bad = df.index[~df["prompt_harm_label"].isin(list(LABELS))].tolist()
    if bad:
        raise DataValidationError(
            f"{path}: prompt_harm_label must be harmful|unharmful; bad rows {bad[:5]}"
            + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    empty = df.index[~df["prompt"].map(lambda p: isinstance(p, str) and p.strip() != "")].tolist()
    if empty:
        raise DataValidationError(f"{path}: empty or non-string prompt in rows {empty[:5]}")
    counts = df["prompt_harm_label"].value_counts()
    if min(counts.get("harmful", 0), counts.get("unharmful", 0)) < 2:
        raise DataValidationError(f"{path}: need >= 2 prompts of each class, got {counts.to_dict()}")
    return df.reset_index(drop=True)


@dataclass
class Batch:
    """A left-padded micro-batch: ``input_ids``/``attention_mask`` ``[B, T]``, ``position_ids``
    ``[B, T]`` (counted over real tokens, as generation does), ``labels [B]`` (1 = harmful) and
    ``index [B]`` (rows of the :class:`PromptSet`, e.g. into the teacher cache).

    With reply KD (:meth:`irr_ray.train.replies.ReplyTargets.extend`) each row continues with the
    teacher's reply: ``prompt_mask [B, T]`` then marks the prompt tokens (what the LM loss and the
    matching readouts see), ``reply_valid [B, R]`` the reply tokens that count and
    ``prompt_width`` the column where the replies start (the last prompt token is column
    ``prompt_width − 1`` in every row)."""

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor
    index: Tensor
    prompt_mask: Tensor | None = None
    reply_valid: Tensor | None = None
    prompt_width: int | None = None

    @property
    def readout_mask(self) -> Tensor:
        """The prompt tokens: ``prompt_mask``, or the attention mask of a prompt-only batch."""
        return self.attention_mask if self.prompt_mask is None else self.prompt_mask

    @property
    def last_prompt_column(self) -> int:
        """Column of every row's last prompt token (prompts are left-padded)."""
        return (self.input_ids.shape[1] if self.prompt_width is None else self.prompt_width) - 1

    def rows(self, index: Tensor) -> Batch:
        """The rows ``index`` (a device tensor; repeats allowed) as a batch of their own."""
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index)

        return Batch(self.input_ids.index_select(0, index), self.attention_mask.index_select(0, index),
                     self.position_ids.index_select(0, index), self.labels.index_select(0, index),
                     self.index.index_select(0, index), pick(self.prompt_mask), pick(self.reply_valid),
                     self.prompt_width)

    @property
    def lm_labels(self) -> Tensor:
        """Next-token targets for the LM loss: the prompt itself, with -100 (ignored) on padding and
        on each row's first real token.

        The loss predicts ``labels[t]`` from position ``t - 1``. On a left-padded row the first real
        token's predecessor is padding, so as a target it would be predicted from nothing, and the
        loss would depend on how much padding the batch needed. Masking it gives every row exactly
        the targets it has unpadded or right-padded (where the first token is never a target, as in
        the method's right-padded code): a row's LM loss no longer depends on its batch. Reply
        tokens (reply KD) are never LM targets: the LM loss stays on the prompt.
        """
        real = self.readout_mask != 0
        first_or_pad = ~real | (real.long().cumsum(-1) == 1)
        return self.input_ids.masked_fill(first_or_pad, -100)

    def model_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids}


@dataclass
class PromptSet:
    """Tokenised chat prompts (unpadded, one tensor per prompt) with class labels."""

    ids: list[Tensor]
    labels: Tensor  # [N] int64, 1 = harmful
    prompts: list[str]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> PromptSet:
        """Chat-format and tokenise every prompt once. Prompts longer than ``max_length`` keep their
        *last* tokens, so the generation prompt — where refusal is read — always survives."""
        prompts = df["prompt"].tolist()
        texts = format_chat(tokenizer, prompts)
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids = [torch.tensor(t[-max_length:], dtype=torch.long) for t in enc]
        labels = torch.tensor(df["prompt_harm_label"].map(LABELS).to_numpy(), dtype=torch.long)
        return cls(ids, labels, prompts, int(tokenizer.pad_token_id))

    def subset(self, index: np.ndarray) -> PromptSet:
        idx = [int(i) for i in index]
        return PromptSet([self.ids[i] for i in idx], self.labels[idx], [self.prompts[i] for i in idx], self.pad_id)

    def collate(self, index: np.ndarray | Tensor, device: str | torch.device = "cpu") -> Batch:
        """Left-pad the rows ``index`` into a :class:`Batch` on ``device``."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        seqs = [self.ids[int(i)] for i in idx]
        input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=self.pad_id,
                                                    padding_side="left")
        lengths = torch.tensor([len(s) for s in seqs])
        width = input_ids.shape[1]
        attention_mask = (torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)).long()
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        return Batch(input_ids.to(device), attention_mask.to(device), position_ids.to(device),
                     self.labels[idx].to(device), idx.to(device))

    def batches(self, batch_size: int) -> list[np.ndarray]:
        """Sequential row chunks (evaluation, teacher caching)."""
        n = len(self)
        return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def balanced_subsample(labels: np.ndarray, n_total: int, seed: int) -> np.ndarray:
    """A seeded subset of ``n_total`` rows, half of each class (as far as the classes allow)."""
    rng = np.random.default_rng(seed)
    per = n_total // 2
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in (1, 0)]
    return np.sort(np.concatenate(picks))


def split_validation(labels: np.ndarray, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed validation slice (``n_per_class`` of each class) and the remaining training rows."""
    rng = np.random.default_rng([seed, 7919])
    val = []
    for c in (1, 0):
        rows = np.flatnonzero(labels == c)
        if len(rows) < n_per_class + 2:
            raise DataValidationError(
                f"only {len(rows)} {'harmful' if c else 'unharmful'} training prompts: cannot hold out "
                f"{n_per_class} for validation (lower train.eval.n_per_class)")
        val.append(rng.permutation(rows)[:n_per_class])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def class_balanced_batches(labels: np.ndarray, micro_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch of micro-batches, each ``micro_batch/2`` harmful + ``micro_batch/2`` harmless.

    Both classes are shuffled with ``(seed, epoch)``; the epoch has ``min(n_harmful, n_harmless)
    // (micro_batch/2)`` batches, so leftover rows of the larger class (different ones each epoch)
    wait for the next epoch. Row order inside a batch is shuffled too.
    """
    if micro_batch % 2 or micro_batch < 2:
        raise ValueError(f"micro_batch must be even and >= 2, got {micro_batch}")
    half = micro_batch // 2
    rng = np.random.default_rng([seed, epoch, 104729])
    pos = rng.permutation(np.flatnonzero(labels == 1))
    neg = rng.permutation(np.flatnonzero(labels == 0))
    n_batches = min(len(pos), len(neg)) // half
    if n_batches == 0:
        raise DataValidationError(
            f"micro_batch {micro_batch} needs >= {half} prompts per class; got {len(pos)} harmful, "
            f"{len(neg)} harmless")
    pairs = np.concatenate([pos[: n_batches * half].reshape(n_batches, half),
                            neg[: n_batches * half].reshape(n_batches, half)], axis=1)
    order = rng.permuted(pairs, axis=1)
    return list(order)


def shuffled_batches(n_rows: int, micro_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch the method's way: a permutation of all ``n_rows`` (both classes mixed), seeded by
    ``(seed, epoch)``, cut into consecutive micro-batches of ``micro_batch`` (the last one shorter
    when it does not divide, as a DataLoader without ``drop_last``). Class counts per micro-batch
    are whatever the shuffle gives."""
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    if n_rows < 1:
        raise DataValidationError("no training prompts to batch")
    order = np.random.default_rng([seed, epoch, 130363]).permutation(n_rows)
    return [order[i:i + micro_batch] for i in range(0, n_rows, micro_batch)]


def epoch_batches(labels: np.ndarray, micro_batch: int, seed: int, epoch: int,
                  batching: str = "balanced") -> list[np.ndarray]:
    """The epoch's micro-batches by ``train.batching``: ``balanced`` (:func:`class_balanced_batches`)
    or ``shuffled`` (:func:`shuffled_batches`)."""
    if batching == "shuffled":
        return shuffled_batches(len(labels), micro_batch, seed, epoch)
    if batching != "balanced":
        raise ValueError(f"unknown batching {batching!r} (balanced | shuffled)")
    return class_balanced_batches(labels, micro_batch, seed, epoch)
