"""Reply KD: distil the teacher's whole greedy reply, not only its first token.

With KD at the last prompt position only, the student is told nothing about the text that follows
the first reply token; a long run at a high learning rate keeps that token ("I") and breaks the
rest ("I I I …"). Reply KD adds the teacher's distribution at every position of its own reply:

1. once per run, the frozen teacher (the source model) writes its greedy reply ``y = y_0 … y_{R−1}``
   to every training prompt ``x`` (R = ``kd_reply_tokens``; tokens after the first end-of-turn are
   masked out, the end-of-turn itself counts) — :func:`teacher_replies`;
2. every micro-batch is teacher-forced on ``x ⊕ y`` (:meth:`ReplyTargets.extend`; the LM loss and
   the matching readouts still see the prompt tokens only);
3. the KD term becomes ::

       KD = T²·KL(p_t(·|x) ‖ p_s(·|x))  +  mean_{j=1…R−1, y_j valid} T²·KL(p_t(·|x, y_<j) ‖ p_s(·|x, y_<j))

   — the last-position term (the refusal decision) as without reply KD, plus the mean over the
   reply positions that follow (:func:`reply_kd`).

The teacher's reply-position logits ``[N, R−1, V]`` are cached in the compute dtype when they fit
``kd_reply_cache_mb``; otherwise a frozen copy of the teacher runs teacher-forced on each
micro-batch (no gradient; the targets are the same either way). For a model that *is* the teacher
the term is zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irr_ray.train.data import Batch, PromptSet

log = logging.getLogger(__name__)


def kl_positions(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))`` per position of ``[..., V]`` logits → ``[...]`` (float32)."""
    dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    log_s = F.log_softmax(student.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher.detach().to(dtype) / temperature, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1) * temperature**2


def reply_kd(student: Tensor, teacher: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Mean KD over the valid reply positions: ``student`` / ``teacher`` ``[n, R−1, V]``, ``valid
    [n, R−1]`` (bool). Zero when no position is valid."""
    kl = kl_positions(student, teacher, temperature)
    w = valid.to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp_min(1.0)


@dataclass
class ReplyTargets:
    """The teacher's greedy replies to a :class:`PromptSet` and its distributions along them.

    ``ids`` / ``valid`` ``[N, R]`` (CPU): reply tokens, and which count (up to and including the
    first end-of-turn; ``valid[:, 0]`` is always True). ``logits`` ``[N, R−1, V]`` (CPU, compute
    dtype): the teacher's next-token logits at reply positions 1 … R−1 (position j predicts
    ``y_j`` from ``x ⊕ y_<j``), or None when ``teacher`` (a frozen copy) computes them per batch.
    """

    ids: Tensor
    valid: Tensor
    logits: Tensor | None = None
    teacher: nn.Module | None = None
    dtype: torch.dtype = torch.float32

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[1])

    def extend(self, batch: Batch) -> Batch:
        """``batch`` (left-padded prompts) with each row's reply appended: ``[B, T + R]``; reply
        tokens past the end-of-turn are masked out; ``prompt_mask`` keeps the prompt tokens only."""
        idx = batch.index.cpu()
        device = batch.input_ids.device
        ids = self.ids[idx].to(device, non_blocking=True)
        valid = self.valid[idx].to(device, non_blocking=True)
        attention_mask = torch.cat([batch.attention_mask, valid.long()], dim=1)
        prompt_mask = torch.cat([batch.readout_mask, torch.zeros_like(valid, dtype=batch.attention_mask.dtype)], dim=1)
        return replace(batch, input_ids=torch.cat([batch.input_ids, ids], dim=1), attention_mask=attention_mask,
                       position_ids=(attention_mask.cumsum(-1) - 1).clamp_min(0), prompt_mask=prompt_mask,
                       reply_valid=valid, prompt_width=batch.input_ids.shape[1])

    def targets(self, extended: Batch) -> Tensor:
        """Teacher logits at reply positions 1 … R−1 of the rows of ``extended`` (an :meth:`extend`
        output), ``[B, R−1, V]`` on its device."""
        if self.logits is not None:
            return self.logits[extended.index.cpu()].to(extended.input_ids.device, non_blocking=True)
        if self.teacher is None:
            raise RuntimeError("ReplyTargets has neither cached logits nor a teacher")
        return teacher_reply_logits(self.teacher, extended, self.tokens, self.dtype)


@torch.no_grad()
def teacher_reply_logits(teacher: nn.Module, extended: Batch, tokens: int, dtype: torch.dtype) -> Tensor:
    """The teacher's logits at reply positions 1 … R−1 of a prompt ⊕ reply batch, ``[B, R−1, V]``."""
    from irr_ray.train.trainer import autocast

    device = str(extended.input_ids.device)
    with autocast(device, dtype):
        out = teacher(**extended.model_inputs(), use_cache=False, logits_to_keep=tokens)
    return out.logits[:, : tokens - 1].to(dtype)


@torch.no_grad()
def teacher_replies(teacher: nn.Module, prompts: PromptSet, tokens: int, batch_size: int, device: str,
                    dtype: torch.dtype, eos_id: int | None, cache_mb: float) -> ReplyTargets:
    """Greedy ``tokens``-token replies of ``teacher`` to every prompt, with its reply-position
    logits cached when ``N·(R−1)·V`` values of ``dtype`` fit ``cache_mb`` MiB (else the caller keeps
    the teacher for :meth:`ReplyTargets.targets`; ``teacher`` must then stay frozen)."""
    from irr_ray.train.trainer import autocast

    if tokens < 2:
        raise ValueError(f"reply KD needs >= 2 reply tokens, got {tokens}")
    was_training = teacher.training
    teacher.eval()
    vocab = int(teacher.get_output_embeddings().weight.shape[0])
    size_mb = len(prompts) * (tokens - 1) * vocab * torch.finfo(dtype).bits / 8 / 2**20
    cache = size_mb <= cache_mb
    ids, valid, logits = [], [], []
    try:
        for idx in prompts.batches(batch_size):
            batch = prompts.collate(idx, device)
            with autocast(device, dtype):
                gen = teacher.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                       max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                       temperature=None, top_p=None, top_k=None, pad_token_id=prompts.pad_id,
                                       eos_token_id=None)
            reply = gen[:, batch.input_ids.shape[1]:]
            is_eos = (reply == eos_id) if eos_id is not None else torch.zeros_like(reply, dtype=torch.bool)
            ok = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first end-of-turn
            ids.append(reply.cpu())
            valid.append(ok.cpu())
            if cache:
                local = replace(batch, index=torch.arange(len(idx), device=batch.index.device))
                extended = ReplyTargets(reply.cpu(), ok.cpu(), dtype=dtype).extend(local)
                logits.append(teacher_reply_logits(teacher, extended, tokens, dtype).cpu())
    finally:
        teacher.train(was_training)
    out = ReplyTargets(torch.cat(ids), torch.cat(valid), torch.cat(logits) if cache else None, dtype=dtype)
    if not cache:
        log.info("reply KD: %.0f MiB of teacher logits exceed kd_reply_cache_mb=%g; the teacher runs on every "
                 "micro-batch instead", size_mb, cache_mb)
    return out
