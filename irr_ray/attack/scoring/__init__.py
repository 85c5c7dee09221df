"""Candidate scoring behind one interface: :class:`Scorer` and :func:`make_scorer`.

A scorer gives every candidate of an iteration (:class:`~irr_ray.attack.candidates.Candidate`) its
refusal score, KL and induce score, given the raw directions chosen so far (Arditi et al. 2024,
§2.3 / App. C, extended to K ≥ 1 by the method's iterated extension; definitions in
:mod:`irr_ray.attack.scoring.reference`). Two implementations make the same choices:

* :mod:`~irr_ray.attack.scoring.reference` — one candidate at a time, plain forwards (ground truth);
* :mod:`~irr_ray.attack.scoring.fast` — many candidates per forward, only what the choice needs.

``AttackConfig.implementation`` picks one; ``AttackConfig.kl_baseline`` the KL filter's "before".
``AttackConfig.scoring="screened"`` (fast only; default ``exact``) puts the fast scorer behind a
first-order screen (:mod:`~irr_ray.attack.scoring.screened`): exact refusal passes only for the
candidates an attribution-patching estimate ranks first, widened until the choice is certain under
a calibrated margin — the same choice whenever that calibration holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from irr_ray.attack.candidates import Candidate, CandidateScore
from irr_ray.attack.prompts import PromptPair
from irr_ray.attack.scoring.fast import FastScorer
from irr_ray.attack.scoring.reference import ReferenceScorer, score_candidates_reference
from irr_ray.attack.scoring.screened import ScreenedScorer

if TYPE_CHECKING:
    from irr_ray.attack.config import AttackConfig

__all__ = ["FastScorer", "ReferenceScorer", "Scorer", "ScreenedScorer", "make_scorer", "score_candidates_reference"]


class Scorer(Protocol):
    """Scores candidates given the raw directions chosen so far (fast or reference)."""

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]: ...


def make_scorer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, score: PromptPair,
                refusal_ids: Sequence[int], cfg: AttackConfig) -> Scorer:
    """The configured candidate scorer for the scoring prompts ``score`` (``cfg.implementation``:
    fast or reference; ``cfg.scoring``: exact or screened; the prompts are tokenised once)."""
    if cfg.scoring == "screened":
        return ScreenedScorer.from_config(model, tokenizer, score, refusal_ids, cfg)
    if cfg.implementation == "reference":
        return ReferenceScorer(model, tokenizer, score, refusal_ids, cfg)
    return FastScorer.from_config(model, tokenizer, score, refusal_ids, cfg)
