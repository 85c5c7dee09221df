"""Screened candidate scoring: exact refusal passes only for the candidates that can win.

The fast scorer (:mod:`irr_ray.attack.scoring.fast`) runs the exact refusal pass (a forward over
the harmful scoring prompts with span(Q, u_c) ablated) for *every* candidate, because the choice
is the lowest refusal score among survivors. This scorer ranks the candidates first by a
first-order estimate of that score (:mod:`irr_ray.core.attribution`, attribution patching: one
forward + backward over the harmful prompts under the current ablation Q gives every candidate's
estimate Ê_c = S₀ + Δ̂_c), then:

1. scores exactly (refusal, then the filters in refusal order, as the fast scorer) the
   ``screen_top`` candidates with the lowest Ê, and finds the best survivor b among them
   (KL ≤ kl_threshold, induce ≥ induce_threshold, lowest exact refusal R_b);
2. calibrates the estimate on the scored candidates (:func:`calibrate`): the exact changes
   Δ_j = R_j − S₀ against the estimated Δ̂_j give a scale β (least squares through the origin —
   the first-order estimate's size is systematically off, its direction much less) and a margin
   m = ``screen_safety`` · max_{scored j} |Δ_j − β·Δ̂_j|;
3. stops when the choice is **certain** under that calibration: β > 0 and every unscored
   candidate has S₀ + β·Δ̂_c − m > R_b, i.e. even a prediction off by the margin puts its exact
   refusal above the survivor's (R_b is then the lowest refusal among all survivors, the exact
   selection rule). Otherwise it doubles the scored set, up to ``screen_budget`` exact refusal
   passes (None: no cap);
4. with no survivor among the scored candidates the choice may be the fallback
   argmin(refusal + α·KL) over *all* candidates. By default (``screen_fallback: false``) it then
   scores every candidate and finishes exactly as the fast scorer does (identical choice, at the
   full cost). ``screen_fallback: true`` screens that case too: the survivor set needs only the
   filters (induce for every unscored candidate, KL where induce passes — no refusal pass); if
   some unscored candidate survives, all survivors' refusal is scored and the lowest wins (exact);
   if none does, KL ≥ 0 and α ≥ 0 mean an unscored candidate can win only with refusal ≤ the best
   objective among the scored, so the choice is certain when every unscored prediction
   S₀ + β·Δ̂_c − m is above that objective (same calibration as 3.), else it widens.

Honesty: the margin is an empirical calibration, not a bound (a first-order estimate has no
guaranteed error); with ``screen_budget`` set, a budget hit returns the best survivor found,
which may differ from the exact choice. :attr:`ScreenedScorer.last` records what each call did.
Unscored candidates get NaN refusal / KL / induce (never survivors, never the fallback's winner).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from irr_ray.attack.candidates import Candidate, CandidateScore
from irr_ray.attack.scoring.fast import FastScorer
from irr_ray.core.attribution import first_order_scores
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions
from irr_ray.core.scoring import EncodedPrompts, complete_sets, last_position_logits, refusal_log_odds

if TYPE_CHECKING:
    from irr_ray.attack.config import AttackConfig


@dataclass
class ScreenStats:
    """What one :meth:`ScreenedScorer.score` call did."""

    candidates: int
    exact_refusal: int  # exact refusal passes (candidates whose refusal was scored)
    rounds: int  # 1 + number of widenings
    certain: bool  # stopped because the choice was certain (calibrated margin)
    all_scored: bool  # every candidate scored exactly (widened to all, or the no-survivor fallback)
    budget_hit: bool  # stopped at screen_budget without certainty (the choice may differ from exact)
    fallback: bool  # no survivor: the choice is argmin(refusal + α·KL)
    scale: float  # β of the last calibration (NaN: never calibrated, e.g. everything scored at once)
    margin: float  # screen_safety × max |exact change − β·Δ̂| over the scored candidates
    estimates: list[float]  # S₀ + Δ̂_c per candidate (the uncalibrated first-order estimate)


def calibrate(delta_hat: torch.Tensor, delta: torch.Tensor, safety: float) -> tuple[float, float]:
    """(β, m) from the scored candidates: β = Σ Δ·Δ̂ / Σ Δ̂² (least squares through the origin:
    a candidate that ablates nothing new has Δ̂ = Δ = 0) and m = ``safety`` · max |Δ − β·Δ̂|.
    β = NaN when every Δ̂ is 0."""
    dh, d = delta_hat.double(), delta.double()
    denom = float((dh * dh).sum())
    if denom <= 0:
        return math.nan, math.nan
    scale = float((d * dh).sum()) / denom
    return scale, safety * float((d - scale * dh).abs().max())


class ScreenedScorer(FastScorer):
    """The fast scorer's passes behind an attribution screen (module docstring)."""

    def __init__(self, *args: Any, screen_top: int = 8, screen_budget: int | None = None,
                 screen_safety: float = 2.0, screen_fallback: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if screen_top < 1:
            raise ValueError(f"screen_top must be ≥ 1, got {screen_top}")
        if screen_budget is not None and screen_budget < screen_top:
            raise ValueError(f"screen_budget ({screen_budget}) must be ≥ screen_top ({screen_top})")
        if screen_safety < 1:
            raise ValueError(f"screen_safety must be ≥ 1, got {screen_safety}")
        self.screen_top, self.screen_budget, self.screen_safety = screen_top, screen_budget, screen_safety
        self.screen_fallback = screen_fallback
        self.last: ScreenStats | None = None

    @classmethod
    def config_kwargs(cls, cfg: AttackConfig) -> dict[str, Any]:
        """FastScorer's knobs (always lazy: the screen decides what is scored) and the screen's."""
        return {**super().config_kwargs(cfg), "lazy": True, "screen_top": cfg.screen_top,
                "screen_budget": cfg.screen_budget, "screen_safety": cfg.screen_safety,
                "screen_fallback": cfg.screen_fallback}

    # ---------------------------------------------------------------------------- pieces

    def estimates(self, sets: torch.Tensor, q: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(S₀, Δ̂ [C] float64): the current mean harmful refusal log-odds (Q ablated) and the
        first-order effect of ablating each candidate's new unit direction (the last row of its
        set), one forward + backward per harmful bucket."""
        n = self.n_harmful

        def score_fn(model: nn.Module, batch: EncodedPrompts) -> torch.Tensor:
            logits = last_position_logits(model, batch["input_ids"], batch["attention_mask"])
            return refusal_log_odds(logits, self.refusal_ids).sum() / n

        ablation = ablate_directions(self.model, q.to(self.device)) if q.shape[0] else contextlib.nullcontext()
        with ablation:
            return first_order_scores(self.model, self.harmful, score_fn, sets[:, -1].to(self.device))

    def _best_survivor(self, candidates: Sequence[Candidate], sets: torch.Tensor, q: torch.Tensor,
                       scored: Sequence[int], refusal: torch.Tensor, kl: torch.Tensor, induce: dict[int, float],
                       cache: dict[int, list[torch.Tensor]]) -> int | None:
        """The survivor with the lowest exact refusal among ``scored`` (ties by index), or None:
        walked in refusal order in chunks of 1, 2, 4, …, induce first, KL where induce passes
        (the fast scorer's walk; filters already known are reused)."""
        order = sorted(scored, key=lambda j: (float(refusal[j]), j))
        lo, size = 0, 1
        while lo < len(order):
            part = order[lo:lo + size]
            todo = [j for j in part if j not in induce]
            if todo:
                induce.update(self._induce(candidates, todo, q, cache))
            need_kl = [j for j in part if induce[j] >= self.cfg.induce_threshold and math.isnan(float(kl[j]))]
            if need_kl:
                kl[need_kl] = self._kl(sets[need_kl])
            for j in part:
                if induce[j] >= self.cfg.induce_threshold and float(kl[j]) <= self.cfg.kl_threshold:
                    return j
            lo, size = lo + size, size * 2
        return None

    def _score_refusal(self, sets: torch.Tensor, which: Sequence[int], refusal: torch.Tensor) -> None:
        """Exact refusal passes for the candidates of ``which`` not scored yet (in place)."""
        new = [j for j in which if math.isnan(float(refusal[j]))]
        if new:
            refusal[new] = self._refusal(sets[new])

    def _survivor_elsewhere(self, candidates: Sequence[Candidate], sets: torch.Tensor, q: torch.Tensor,
                            rest: Sequence[int], refusal: torch.Tensor, kl: torch.Tensor, induce: dict[int, float],
                            cache: dict[int, list[torch.Tensor]]) -> int | None:
        """No survivor among the scored: the filters of the unscored ``rest`` (induce for all, KL
        where induce passes; no refusal pass needed). If some survive, their exact refusal is
        scored and the lowest wins (ties by index) — then every survivor is known and scored."""
        todo = [j for j in rest if j not in induce]
        if todo:
            induce.update(self._induce(candidates, todo, q, cache))
        need_kl = [j for j in rest if induce[j] >= self.cfg.induce_threshold and math.isnan(float(kl[j]))]
        if need_kl:
            kl[need_kl] = self._kl(sets[need_kl])
        alive = [j for j in rest if induce[j] >= self.cfg.induce_threshold and float(kl[j]) <= self.cfg.kl_threshold]
        if not alive:
            return None
        self._score_refusal(sets, alive, refusal)
        return min(alive, key=lambda j: (float(refusal[j]), j))

    def _fallback_objective(self, sets: torch.Tensor, refusal: torch.Tensor, kl: torch.Tensor) -> float:
        """The fast scorer's bounded fallback over the scored candidates (unscored ones, refusal
        NaN, count as +∞ and are never reached); returns min(refusal + α·KL) over them."""
        self._bound_fallback(sets, torch.nan_to_num(refusal, nan=math.inf), kl)
        value = refusal + self.cfg.kl_alpha * kl
        value = value[~value.isnan()]
        return float(value.min()) if value.numel() else math.inf

    # ---------------------------------------------------------------------------- public

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]:
        """Scores of ``candidates`` given the raw directions ``chosen`` so far (module docstring);
        NaN where a candidate was not scored exactly."""
        if not candidates:
            return []
        width = candidates[0].vector.shape[-1]
        q = orthonormalize(torch.stack([c.float().cpu() for c in chosen])) if chosen else torch.zeros(0, width)
        self._q = q
        sets = complete_sets(q, torch.stack([c.vector.float().cpu() for c in candidates]))
        s0, delta = self.estimates(sets, q)
        n_all = len(candidates)
        order = sorted(range(n_all), key=lambda j: (float(delta[j]), j))
        budget = n_all if self.screen_budget is None else min(n_all, self.screen_budget)
        refusal = torch.full((n_all,), math.nan, dtype=torch.float64)
        kl = torch.full_like(refusal, math.nan)
        induce: dict[int, float] = {}
        cache: dict[int, list[torch.Tensor]] = {}
        n, rounds, certain, budget_hit, fallback = min(self.screen_top, n_all), 0, False, False, False
        scale, margin = math.nan, math.nan
        while True:
            rounds += 1
            self._score_refusal(sets, order[:n], refusal)
            best = self._best_survivor(candidates, sets, q, order[:n], refusal, kl, induce, cache)
            if n == n_all:
                break
            scale, margin = calibrate(delta[order[:n]], refusal[order[:n]] - s0, self.screen_safety)
            # the lowest calibrated prediction among the unscored: Δ̂ is sorted and scale > 0 keeps that order
            lowest = s0 + scale * float(delta[order[n]]) - margin if scale > 0 else -math.inf
            if best is not None and lowest > float(refusal[best]):
                certain = True
                break
            if best is None and self.screen_fallback:
                best = self._survivor_elsewhere(candidates, sets, q, order[n:], refusal, kl, induce, cache)
                if best is not None:  # every survivor is known and scored: the exact choice
                    certain = True
                    break
                fallback = True
                objective = self._fallback_objective(sets, refusal, kl)
                if lowest > objective:  # no unscored candidate can reach the fallback's minimum
                    certain = True
                    break
            if n >= budget:
                if best is not None or fallback:
                    budget_hit = True
                    break
                n = n_all  # no survivor: the fallback needs every candidate, as exact scoring
                continue
            n = min(2 * n, budget)
        if best is None:
            self._fallback_objective(sets, refusal, kl)
        scored = int((~refusal.isnan()).sum())
        self.last = ScreenStats(candidates=n_all, exact_refusal=scored, rounds=rounds, certain=certain,
                                all_scored=scored == n_all, budget_hit=budget_hit, fallback=best is None,
                                scale=scale, margin=margin, estimates=[s0 + float(d) for d in delta])
        return [CandidateScore(layer=c.layer, position=c.position, norm=c.norm, refusal_score=float(refusal[j]),
                               kl=float(kl[j]), induce_score=induce.get(j, math.nan))
                for j, c in enumerate(candidates)]
