"""The attack's candidates: which layers, how they are extracted, and how one is chosen.

Arditi et al. (2024), "Refusal in language models is mediated by a single direction" (§2.3,
App. C), extended to K ≥ 1 by re-extraction under ablation (the method's iterated extension):

* **Candidate layers** (:func:`candidate_layers`). ``layer`` always means a *residual-stream
  index* ℓ: x_ℓ is the input of block ℓ (HF ``hidden_states[ℓ]``; x_0 = the embeddings), so a
  direction extracted "at the output of block b" has index ℓ = b + 1. With c = int((1 − prune)·L):

  - ``"method"`` (the default): block outputs b < c, i.e. ℓ = 1 … c — the method's convention;
  - ``"arditi"``: block inputs ℓ = 0 … c − 1 — Arditi et al.'s public code
    (``refusal_direction``: means at forward pre-hooks of every block, then ``filter_fn`` discards
    ``layer >= int(n_layer * (1.0 - prune_layer_percentage))``, 0.2 by default).

  The two sets differ by one shift: "arditi" adds the embeddings ℓ = 0 and lacks ℓ = c.
* **Extraction** (:func:`mean_difference_candidates`). With the chosen directions ablated (three
  sites, every layer), r[ℓ, p] = μ_harmful[ℓ, p] − μ_harmless[ℓ, p], the difference of the mean
  residuals x_ℓ at position p (an offset from the last prompt token, −5 … −1 by default) over the
  extraction prompts. A difference that is exactly zero (a layer where every prompt has the same
  token at that position, e.g. the embeddings of the fixed chat-template tokens) defines no
  direction and is dropped.
* **Selection** (:func:`select_direction`), given each candidate's refusal score, KL and induce
  score (:mod:`irr_ray.attack.scoring`): survivors have KL ≤ kl_threshold and induce ≥
  induce_threshold (Arditi et al.'s filters); the survivor with the lowest refusal score wins; if
  none survives, argmin(refusal + kl_alpha·KL). Ties go to the first candidate in (layer,
  position) order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from irr_ray.attack.config import CandidateLayerRule
from irr_ray.core.directions import RunningMean
from irr_ray.core.hooks import ResidualCapture, ablate_directions
from irr_ray.core.scoring import EncodedPrompts
from irr_ray.models.chat import tokenize_chat

__all__ = [
    "Candidate",
    "CandidateLayerRule",
    "CandidateScore",
    "EncodedPrompts",
    "ScoringSettings",
    "candidate_layers",
    "encode_batches",
    "mean_difference_candidates",
    "select_direction",
]

class ScoringSettings(Protocol):
    """What selection (and scoring) read from a config: ``AttackConfig`` and the organism's
    ``SelectionConfig`` both provide these fields."""

    kl_threshold: float
    kl_alpha: float
    induce_threshold: float
    steering_coeff: float


@dataclass(frozen=True)
class Candidate:
    """A raw difference-of-means vector r [D] of the residual x_``layer`` (block input index) at
    ``position`` (offset from the last prompt token)."""

    layer: int
    position: int
    vector: torch.Tensor

    @property
    def norm(self) -> float:
        return float(self.vector.double().norm())


@dataclass(frozen=True)
class CandidateScore:
    """A candidate's scores (:mod:`irr_ray.attack.scoring`); ``layer`` is its residual index.
    NaN marks a score the fast scorer did not need for the choice (KL / induce; also refusal under
    ``scoring: screened``)."""

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


# ---------------------------------------------------------------------------- layers


def candidate_layers(num_layers: int, prune_fraction: float, rule: CandidateLayerRule = "method") -> list[int]:
    """Residual-stream indices ℓ (x_ℓ = input of block ℓ) the candidates come from (module docstring).

    With c = int((1 − prune_fraction)·L): ``"method"`` → 1 … c (block outputs b < c), capped at
    L − 1 because directions are added back at a block input in the induce pass (the cap only
    binds at prune_fraction = 0); ``"arditi"`` → 0 … c − 1 (block inputs). If that leaves nothing
    (tiny L), the rule's lowest layer: 1 (or 0 when L = 1), resp. 0.
    """
    if num_layers < 1:
        raise ValueError(f"candidate_layers: num_layers must be ≥ 1, got {num_layers}")
    cutoff = int(num_layers * (1.0 - prune_fraction))
    if rule == "method":
        top = min(cutoff, num_layers - 1)
        return list(range(1, top + 1)) or [min(1, num_layers - 1)]
    if rule == "arditi":
        return list(range(0, min(cutoff, num_layers))) or [0]
    raise ValueError(f"candidate_layers: unknown rule {rule!r} (method, arditi)")


# ---------------------------------------------------------------------------- extraction


def encode_batches(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int,
    device: str | torch.device = "cpu",
    max_length: int | None = None,
) -> list[EncodedPrompts]:
    """Chat-formatted, left-padded batches of ``batch_size`` prompts (tokenised once, reused)."""
    return [tokenize_chat(tokenizer, prompts[i : i + batch_size], max_length=max_length, device=device)
            for i in range(0, len(prompts), batch_size)]


def _ablation(model: nn.Module, directions: torch.Tensor | None) -> contextlib.AbstractContextManager:
    if directions is None or directions.shape[0] == 0:
        return contextlib.nullcontext()
    return ablate_directions(model, directions)


@torch.no_grad()
def mean_difference_candidates(
    model: nn.Module,
    harmful_batches: Sequence[EncodedPrompts],
    harmless_batches: Sequence[EncodedPrompts],
    layers: Sequence[int],
    positions: Sequence[int],
    chosen_directions: torch.Tensor | None = None,
) -> list[Candidate]:
    """r[ℓ, p] = μ_harmful − μ_harmless of the residuals x_ℓ (``layers``: residual indices) at
    ``positions``, with the orthonormal ``chosen_directions`` [K, D] ablated, in (layer, position)
    order; exactly-zero differences are dropped (they define no direction)."""
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


# ---------------------------------------------------------------------------- selection


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
