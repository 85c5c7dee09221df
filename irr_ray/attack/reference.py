"""Plain reference implementation of the attack's candidate extraction, scoring and selection.

One candidate at a time, three full forward passes per candidate, no caching tricks: this is the
ground truth the fast batched scorer (:mod:`irr_ray.attack.fast`) must reproduce, and what the
organism build uses to pick its single direction. Arditi et al. (2024), extended to K ≥ 1:

With the chosen directions r_1 … r_K (raw) and a candidate r = μ_harmful[l, p] − μ_harmless[l, p]
(difference of means of the residual stream at block input l, position p, computed with
span(r_1 … r_K) ablated), let D = orthonormalize([r_1 … r_K, r]) and let

    ρ(x) = log p_R(x) − log(1 − p_R(x)),   p_R = Σ_{t ∈ R} softmax(logits at the last position)_t

be the refusal log-odds of a prompt x for the refusal tokens R (Llama-3 and the organism: {"I"}).

* ``refusal_score`` = mean ρ over harmful prompts with span(D) ablated (3 sites, every layer);
  lower = the candidate removes more refusal;
* ``harmless_kl``   = mean KL(p_before ‖ p_after) of the next-token distribution at the last
  position over harmless prompts, before = the unattacked model, after = span(D) ablated;
* ``induce_score``  = mean ρ over harmless prompts with the already chosen directions ablated and
  coeff·r (raw, unnormalised) added at the input of block l, every position; ≥ threshold means
  the direction really carries refusal (adding it makes harmless prompts refuse).

Selection: survivors have KL ≤ kl_threshold and induce ≥ induce_threshold; the survivor with the
lowest refusal score wins; if none survives, argmin(refusal + kl_alpha·KL). Ties go to the first
candidate in (layer, position) order. Candidates come from the block inputs l < (1 − prune)·L and
positions −5 … −1; a candidate whose difference of means is exactly zero (a layer where every
prompt has the same token at that position, e.g. the embeddings of the fixed chat-template tokens)
defines no direction and is skipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from irr_ray.core.directions import RunningMean, orthonormalize
from irr_ray.core.hooks import ResidualCapture, ablate_directions, add_activation, left_pad_position_ids
from irr_ray.models.chat import tokenize_chat

Batch = dict[str, torch.Tensor]


class ScoringSettings(Protocol):
    """What scoring and selection read from a config (``AttackConfig`` and the organism's
    ``SelectionConfig`` both provide these fields)."""

    kl_threshold: float
    kl_alpha: float
    induce_threshold: float
    steering_coeff: float


@dataclass(frozen=True)
class Candidate:
    """A raw difference-of-means vector r [D] taken at block input ``layer``, ``position``."""

    layer: int
    position: int
    vector: torch.Tensor

    @property
    def norm(self) -> float:
        return float(self.vector.double().norm())


@dataclass(frozen=True)
class CandidateScore:
    layer: int
    position: int
    norm: float
    refusal_score: float
    kl: float
    induce_score: float

    def survives(self, cfg: ScoringSettings) -> bool:
        return self.kl <= cfg.kl_threshold and self.induce_score >= cfg.induce_threshold

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


# ---------------------------------------------------------------------------- forwards


def encode_batches(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int, device: str | torch.device = "cpu"
) -> list[Batch]:
    """Chat-formatted, left-padded batches of ``batch_size`` prompts (tokenised once, reused)."""
    return [
        tokenize_chat(tokenizer, prompts[i : i + batch_size], device=device)
        for i in range(0, len(prompts), batch_size)
    ]


@torch.no_grad()
def last_position_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token logits at the last prompt position, [B, V] (float64)."""
    mask = batch["attention_mask"]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=left_pad_position_ids(mask),
        use_cache=False,
    )
    return out.logits[:, -1, :].double()


def refusal_log_odds(logits: torch.Tensor, refusal_token_ids: Sequence[int]) -> torch.Tensor:
    """ρ = log p_R − log(1 − p_R) per row of ``logits`` [B, V] → [B], from log-sum-exps (no ε)."""
    ids = torch.as_tensor(list(refusal_token_ids), dtype=torch.long, device=logits.device)
    z = logits.double()
    others = z.clone()
    others[:, ids] = -math.inf
    return torch.logsumexp(z[:, ids], dim=-1) - torch.logsumexp(others, dim=-1)


def _ablation(model: nn.Module, directions: torch.Tensor | None) -> contextlib.AbstractContextManager:
    if directions is None or directions.shape[0] == 0:
        return contextlib.nullcontext()
    return ablate_directions(model, directions)


def _mean_over_batches(batches: Sequence[Batch], per_row: Callable[[Batch], torch.Tensor]) -> float:
    values = torch.cat([per_row(b) for b in batches])
    return float(values.mean())


def refusal_score(
    model: nn.Module,
    batches: Sequence[Batch],
    refusal_token_ids: Sequence[int],
    directions: torch.Tensor | None = None,
) -> float:
    """Mean refusal log-odds over ``batches`` with orthonormal ``directions`` [K, D] ablated."""

    def per_row(batch: Batch) -> torch.Tensor:
        with _ablation(model, directions):
            return refusal_log_odds(last_position_logits(model, batch), refusal_token_ids)

    return _mean_over_batches(batches, per_row)


def harmless_kl(
    model: nn.Module,
    batches: Sequence[Batch],
    directions: torch.Tensor,
    before_logits: Sequence[torch.Tensor] | None = None,
) -> float:
    """Mean KL(p_before ‖ p_after) of the last-position distribution; before = unattacked model
    (``before_logits`` per batch, computed here when not given), after = ``directions`` ablated."""
    if before_logits is None:
        before_logits = [last_position_logits(model, b) for b in batches]
    kls = []
    for batch, before in zip(batches, before_logits):
        with _ablation(model, directions):
            after = last_position_logits(model, batch)
        lp_before = torch.log_softmax(before.double(), dim=-1)
        lp_after = torch.log_softmax(after, dim=-1)
        kls.append((lp_before.exp() * (lp_before - lp_after)).sum(-1))
    return float(torch.cat(kls).mean())


def induce_score(
    model: nn.Module,
    batches: Sequence[Batch],
    refusal_token_ids: Sequence[int],
    layer: int,
    vector: torch.Tensor,
    coeff: float,
    directions: torch.Tensor | None = None,
) -> float:
    """Mean refusal log-odds with ``coeff·vector`` added at block input ``layer`` (every position)
    and the already chosen orthonormal ``directions`` ablated."""

    def per_row(batch: Batch) -> torch.Tensor:
        with _ablation(model, directions), add_activation(model, layer, vector, coeff=coeff):
            return refusal_log_odds(last_position_logits(model, batch), refusal_token_ids)

    return _mean_over_batches(batches, per_row)


# ---------------------------------------------------------------------------- candidates


def candidate_layers(num_layers: int, prune_layer_fraction: float) -> list[int]:
    """Block inputs l < (1 − prune_layer_fraction)·L (Arditi et al. drop the last 20%)."""
    cutoff = (1.0 - prune_layer_fraction) * num_layers
    return [layer for layer in range(num_layers) if layer < cutoff] or [0]


@torch.no_grad()
def mean_difference_candidates(
    model: nn.Module,
    harmful_batches: Sequence[Batch],
    harmless_batches: Sequence[Batch],
    layers: Sequence[int],
    positions: Sequence[int],
    chosen_directions: torch.Tensor | None = None,
) -> list[Candidate]:
    """r[l, p] = μ_harmful − μ_harmless of block-input residuals (chosen directions ablated), in
    (layer, position) order; exactly-zero differences are dropped (they define no direction)."""
    means = []
    for batches in (harmful_batches, harmless_batches):
        running = RunningMean()
        with _ablation(model, chosen_directions), ResidualCapture(model, layers=layers, positions=positions) as cap:
            for batch in batches:
                running.update(cap.run(batch["input_ids"], batch["attention_mask"]).transpose(1, 2))
        means.append(running.mean)  # [L, P, D] float64
    diff = (means[0] - means[1]).float()
    return [
        Candidate(layer, position, diff[i, j])
        for i, layer in enumerate(layers)
        for j, position in enumerate(positions)
        if bool(diff[i, j].abs().max() > 0)
    ]


# ---------------------------------------------------------------------------- scoring + selection


def score_candidates_reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    candidates: Sequence[Candidate],
    chosen_directions: Sequence[torch.Tensor],
    cfg: ScoringSettings,
    refusal_token_ids: Sequence[int],
    batch_size: int = 32,
) -> list[CandidateScore]:
    """Score every candidate, one at a time (module docstring). ``chosen_directions`` are the raw
    directions already chosen (in order); each candidate is ablated together with them."""
    device = next(model.parameters()).device
    harmful = encode_batches(tokenizer, harmful_prompts, batch_size, device)
    harmless = encode_batches(tokenizer, harmless_prompts, batch_size, device)
    before = [last_position_logits(model, b) for b in harmless]
    chosen = list(chosen_directions)
    q = orthonormalize(torch.stack(chosen).float()) if chosen else None
    scores = []
    for cand in candidates:
        d = orthonormalize(torch.stack([*chosen, cand.vector]).float()).to(device)
        scores.append(
            CandidateScore(
                layer=cand.layer,
                position=cand.position,
                norm=cand.norm,
                refusal_score=refusal_score(model, harmful, refusal_token_ids, d),
                kl=harmless_kl(model, harmless, d, before),
                induce_score=induce_score(
                    model, harmless, refusal_token_ids, cand.layer, cand.vector.to(device), cfg.steering_coeff,
                    None if q is None else q.to(device),
                ),
            )
        )
    return scores


def select_direction(scores: Sequence[CandidateScore], cfg: ScoringSettings) -> int:
    """Index of the chosen candidate: lowest refusal among survivors, else argmin(refusal + α·KL);
    ties go to the lowest index. A NaN (unscored) KL or induce score never survives or wins."""
    if not scores:
        raise ValueError("select_direction: no candidates to choose from")
    survivors = [i for i, s in enumerate(scores) if s.survives(cfg)]
    if survivors:
        return min(survivors, key=lambda i: scores[i].refusal_score)

    def objective(i: int) -> float:  # an unscored KL (NaN, the fast scorer's bound) never wins
        value = scores[i].refusal_score + cfg.kl_alpha * scores[i].kl
        return math.inf if math.isnan(value) else value

    return min(range(len(scores)), key=objective)
