"""Refusal scoring helpers of the attack (and the training-time attack proxy): pure torch.

Notation (Arditi et al. 2024, "Refusal in language models is mediated by a single direction",
§3 and App. C): for a prompt x, z = the next-token logits at the last prompt position [V], and R
the refusal tokens (Llama-3 and the organism: {"I"}),

    p_R(x) = Σ_{t ∈ R} softmax(z)_t,        ρ(x) = log p_R(x) − log(1 − p_R(x))

is the *refusal log-odds* (their "refusal score", computed here from log-sum-exps instead of
adding an ε to both logs). The KL filter compares the next-token distributions before and after
an intervention, KL(p_before ‖ p_after) = Σ_t p_before,t (log p_before,t − log p_after,t), at the
last position only.

Batched scoring ablates one orthonormal set per group of batch rows
(:func:`irr_ray.core.hooks.ablate_directions_batched`); :func:`complete_sets` builds those sets —
the chosen directions Q plus one candidate each — without a QR decomposition per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from irr_ray.core.hooks import left_pad_position_ids

__all__ = [
    "EncodedPrompts",
    "complete_sets",
    "continuation_nll",
    "kl_before_after",
    "last_position_logits",
    "refusal_log_odds",
]

EncodedPrompts = dict[str, torch.Tensor]
"""A left-padded, chat-formatted batch: ``input_ids`` and ``attention_mask`` [B, T]."""


def last_position_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    all_positions: bool = False,
) -> torch.Tensor:
    """Next-token logits at the last prompt position, [B, V], in the model's dtype.

    Position ids count real tokens (:func:`~irr_ray.core.hooks.left_pad_position_ids`), so a
    left-padded row scores as it would unpadded. ``all_positions=False`` runs the LM head at the
    last position only (``logits_to_keep=1``: B·D·V instead of B·T·D·V); ``True`` is the plain
    forward of Arditi et al.'s code (LM head everywhere, the last row kept) — same numbers.
    """
    kwargs = {} if all_positions else {"logits_to_keep": 1}
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=left_pad_position_ids(attention_mask), use_cache=False, **kwargs)
    return out.logits[:, -1, :]


def refusal_log_odds(logits: torch.Tensor, refusal_token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """ρ = log p_R − log(1 − p_R) per row of ``logits`` [B, V] → [B] float64 (module docstring),
    as logsumexp over R minus logsumexp over the other tokens: exact, no ε, no overflow."""
    ids = torch.as_tensor(refusal_token_ids, dtype=torch.long).reshape(-1).to(logits.device)
    z = logits.double()
    others = z.clone()
    others[:, ids] = -math.inf
    return torch.logsumexp(z[:, ids], dim=-1) - torch.logsumexp(others, dim=-1)


@torch.no_grad()
def continuation_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     keep: torch.Tensor) -> torch.Tensor:
    """Teacher-forced mean NLL per row of the tokens ``keep`` selects, [B] float64 (NaN where it
    selects none).

    ``input_ids`` / ``attention_mask`` [B, T] are left-padded rows ending in a continuation (a
    reply); ``keep`` [B, R − 1] marks which of each row's last R − 1 tokens count. Only the last R
    positions' logits are computed (``logits_to_keep``): position t predicts token t + 1, so the
    first R − 1 of them predict the last R − 1 tokens. Both the attack's reply coherence
    (:mod:`irr_ray.attack.behaviour`) and the trainer's reply drift (:mod:`irr_ray.train.evaluation`)
    score replies this way, leaving out each reply's first token.
    """
    r = keep.shape[1] + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=left_pad_position_ids(attention_mask), use_cache=False,
                   logits_to_keep=r).logits.double()[:, :-1]
    targets = input_ids[:, input_ids.shape[1] - r + 1:]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    keep = keep.to(logp.dtype)
    n = keep.sum(1)
    return torch.where(n > 0, -(logp * keep).sum(1) / n.clamp_min(1), torch.nan)


def kl_before_after(logits_before: torch.Tensor, logits_after: torch.Tensor) -> torch.Tensor:
    """KL(p_before ‖ p_after) per row of [B, V] logits → [B] float64 (from log-softmaxes, no ε)."""
    lp_b = torch.log_softmax(logits_before.double(), dim=-1)
    lp_a = torch.log_softmax(logits_after.double(), dim=-1)
    return (lp_b.exp() * (lp_b - lp_a)).sum(-1)


def complete_sets(q: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Per-candidate orthonormal sets [C, K+1, D]: the rows of ``q`` [K, D], then u_c ∝ r_c − (r_c·Qᵀ)Q.

    ``q`` has orthonormal rows (the chosen directions), ``raw`` [C, D] the raw candidates r_c. The
    result equals ``orthonormalize(cat(q, r_c))`` for every candidate (Gram–Schmidt keeps Q's rows;
    sign alignment gives u_c·r_c > 0) without a QR per candidate. A candidate inside span(Q) (its
    residual below 1e-5 of its norm) gets a zero row, which ablation treats as "no direction".
    """
    r = raw.double()
    qd = q.double().to(r.device)
    u = r - (r @ qd.T) @ qd if qd.shape[0] else r
    norms = u.norm(dim=-1, keepdim=True)
    keep = norms > 1e-5 * r.norm(dim=-1, keepdim=True)
    u = torch.where(keep, u / norms.clamp_min(1e-300), torch.zeros_like(u))
    sets = torch.cat([qd.unsqueeze(0).expand(r.shape[0], -1, -1), u.unsqueeze(1)], dim=1)
    return sets.to(raw.dtype)
