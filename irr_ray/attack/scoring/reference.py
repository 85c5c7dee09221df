"""Plain reference scoring: one candidate at a time, three full forward passes per candidate.

No caching tricks: this is the ground truth the fast batched scorer
(:mod:`irr_ray.attack.scoring.fast`) must reproduce, and what the organism build uses to pick its
single direction. Arditi et al. (2024), §2.3 / App. C, extended to K ≥ 1 (the method's iterated
extension):

With the raw directions chosen so far r_1 … r_{K−1}, Q = orthonormalize(r_1 … r_{K−1}), a candidate
r (:class:`~irr_ray.attack.candidates.Candidate`, extracted with span(Q) ablated) and
D = orthonormalize([r_1 … r_{K−1}, r]), with ρ the refusal log-odds at the last position
(:func:`irr_ray.core.scoring.refusal_log_odds`):

* ``refusal_score`` = mean ρ over harmful prompts with span(D) ablated (3 sites, every layer);
  lower = the candidate removes more refusal;
* ``kl``            = mean KL(p_before ‖ p_after) of the last-position next-token distribution
  over harmless prompts, after = span(D) ablated, before = (``kl_baseline``)

  - ``"previous"`` (default, the method's): span(Q) ablated — the cost of *adding* r to the
    attack so far (incremental);
  - ``"original"``: the unattacked model — Arditi et al.'s single-direction setting, applied to
    the whole set D. At K = 1 (Q empty) the two coincide;
* ``induce_score``  = mean ρ over harmless prompts with span(Q) ablated and coeff·r (raw,
  unnormalised) added at the input of block ``layer``, every position; ≥ threshold means the
  direction really carries refusal (adding it makes harmless prompts refuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from irr_ray.attack.candidates import Candidate, CandidateScore, ScoringSettings, encode_batches
from irr_ray.attack.config import AttackConfig, KLBaseline
from irr_ray.attack.prompts import PromptPair
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions, add_activation
from irr_ray.core.scoring import EncodedPrompts, kl_before_after, last_position_logits, refusal_log_odds


def _ablation(model: nn.Module, directions: torch.Tensor | None) -> contextlib.AbstractContextManager:
    if directions is None or directions.shape[0] == 0:
        return contextlib.nullcontext()
    return ablate_directions(model, directions)


@torch.no_grad()
def _logits(model: nn.Module, batch: EncodedPrompts) -> torch.Tensor:
    """Plain forward (LM head at every position, as Arditi et al.'s code), last row, float64."""
    return last_position_logits(model, batch["input_ids"], batch["attention_mask"], all_positions=True).double()


def _mean_over_batches(batches: Sequence[EncodedPrompts], per_row: Callable[[EncodedPrompts], torch.Tensor]) -> float:
    return float(torch.cat([per_row(b) for b in batches]).mean())


def refusal_score(
    model: nn.Module,
    batches: Sequence[EncodedPrompts],
    refusal_token_ids: Sequence[int],
    directions: torch.Tensor | None = None,
) -> float:
    """Mean refusal log-odds over ``batches`` with orthonormal ``directions`` [K, D] ablated."""

    def per_row(batch: EncodedPrompts) -> torch.Tensor:
        with _ablation(model, directions):
            return refusal_log_odds(_logits(model, batch), refusal_token_ids)

    return _mean_over_batches(batches, per_row)


def before_logits(model: nn.Module, batches: Sequence[EncodedPrompts],
                  directions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The KL baseline's last-position logits per batch, ``directions`` (orthonormal) ablated."""
    with _ablation(model, directions):
        return [_logits(model, b) for b in batches]


def harmless_kl(
    model: nn.Module,
    batches: Sequence[EncodedPrompts],
    directions: torch.Tensor,
    before: Sequence[torch.Tensor] | None = None,
) -> float:
    """Mean KL(p_before ‖ p_after) of the last-position distribution; after = ``directions``
    ablated, before = ``before`` logits per batch (default: the unattacked model)."""
    if before is None:
        before = before_logits(model, batches)
    kls = []
    for batch, b in zip(batches, before):
        with _ablation(model, directions):
            after = _logits(model, batch)
        kls.append(kl_before_after(b, after))
    return float(torch.cat(kls).mean())


def induce_score(
    model: nn.Module,
    batches: Sequence[EncodedPrompts],
    refusal_token_ids: Sequence[int],
    layer: int,
    vector: torch.Tensor,
    coeff: float,
    directions: torch.Tensor | None = None,
) -> float:
    """Mean refusal log-odds with ``coeff·vector`` added at block input ``layer`` (every position)
    and the already chosen orthonormal ``directions`` ablated."""

    def per_row(batch: EncodedPrompts) -> torch.Tensor:
        with _ablation(model, directions), add_activation(model, layer, vector, coeff=coeff):
            return refusal_log_odds(_logits(model, batch), refusal_token_ids)

    return _mean_over_batches(batches, per_row)


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
    kl_baseline: KLBaseline = "previous",
    max_length: int | None = None,
) -> list[CandidateScore]:
    """Score every candidate, one at a time (module docstring). ``chosen_directions`` are the raw
    directions already chosen (in order); each candidate is ablated together with them."""
    if kl_baseline not in ("previous", "original"):
        raise ValueError(f"kl_baseline must be 'previous' or 'original', got {kl_baseline!r}")
    device = next(model.parameters()).device
    harmful = encode_batches(tokenizer, harmful_prompts, batch_size, device, max_length)
    harmless = encode_batches(tokenizer, harmless_prompts, batch_size, device, max_length)
    chosen = list(chosen_directions)
    q = orthonormalize(torch.stack(chosen).float()).to(device) if chosen else None
    before = before_logits(model, harmless, q if kl_baseline == "previous" else None)
    scores = []
    for cand in candidates:
        d = orthonormalize(torch.stack([*chosen, cand.vector]).float()).to(device)
        scores.append(CandidateScore(
            layer=cand.layer,
            position=cand.position,
            norm=cand.norm,
            refusal_score=refusal_score(model, harmful, refusal_token_ids, d),
            kl=harmless_kl(model, harmless, d, before),
            induce_score=induce_score(model, harmless, refusal_token_ids, cand.layer, cand.vector.to(device),
                                      cfg.steering_coeff, q),
        ))
    return scores


class ReferenceScorer:
    """:func:`score_candidates_reference` behind the :class:`~irr_ray.attack.scoring.Scorer`
    interface, for fixed scoring prompts (``cfg``: thresholds, ``kl_baseline``,
    ``extract_batch_size`` as the batch size, ``max_prompt_tokens``)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: PromptPair,
                 refusal_ids: Sequence[int], cfg: AttackConfig) -> None:
        self.model, self.tokenizer, self.prompts, self.refusal_ids, self.cfg = model, tokenizer, prompts, refusal_ids, cfg

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]:
        return score_candidates_reference(
            self.model, self.tokenizer, self.prompts.harmful, self.prompts.harmless, candidates, chosen, self.cfg,
            self.refusal_ids, batch_size=self.cfg.extract_batch_size, kl_baseline=self.cfg.kl_baseline,
            max_length=self.cfg.max_prompt_tokens)
