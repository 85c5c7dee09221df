"""Fast candidate scoring: many candidates per forward pass (the attack's hot path).

Computes exactly what :func:`irr_ray.attack.scoring.reference.score_candidates_reference`
computes, for the candidates r_c (raw differences of means) of one iteration, given the
orthonormalised stack Q [K, D] of the directions chosen so far (Arditi et al. 2024, extended to
K ≥ 1 by the method's iterated extension):

* ``refusal_score`` mean refusal log-odds on the harmful scoring prompts with span(Q, r_c) ablated;
* ``kl``            mean KL(before ‖ after) on the harmless prompts, after = span(Q, r_c) ablated,
                    before = span(Q) ablated (``kl_baseline="previous"``, the method's) or the
                    unattacked model (``"original"``; equal at K = 1);
* ``induce_score``  mean refusal log-odds on the harmless prompts, Q ablated, coeff·r_c added at
                    the block input of r_c's source layer (its residual index).

Where the speed comes from:

1. **Per-row directions.** Batch rows carry their own set [Q; u_c], u_c = r_c with Q projected out
   and normalised (:func:`irr_ray.core.scoring.complete_sets`, for all candidates at once),
   through :func:`irr_ray.core.hooks.ablate_directions_batched`: several candidates per forward.
2. **Logits at the last position only** (``logits_to_keep=1``): the LM head costs B·D·V, not B·T·D·V.
3. **Tokenisation once** per attack; the KL's "before" logits once per attack (``original``) or
   once per iteration under the current Q (``previous``, computed on first use and cached); the
   prompts sorted into length buckets, each padded only to its own longest prompt.
4. **Induce from the cached residual.** The induce pass equals the plain Q-ablated forward up to
   the source layer s, so x_s of the harmless prompts is captured once per iteration and blocks
   before s are skipped (:func:`irr_ray.core.hooks.restart_at`). Candidates of one layer share the
   capture and their forwards. A one-off comparison with the full forward guards this; a model
   where it does not hold falls back to full forwards, with a warning.
5. **Only what the choice needs** (``lazy``, the default). The choice is the lowest refusal score
   among survivors (KL ≤ threshold, induce ≥ threshold), else argmin(refusal + α·KL). So refusal
   is scored for every candidate; then, in increasing order of refusal (ties by index, as
   :func:`~irr_ray.attack.candidates.select_direction`) and in growing chunks, the cheaper filter
   first — induce, restarted at the source layer — and KL only where induce passes, until a
   survivor appears: every candidate ranked before it has failed a filter, so it is the survivor
   with the lowest refusal. Without any survivor the fallback is bounded exactly: KL ≥ 0 and
   α ≥ 0, so a candidate whose refusal already exceeds the best refusal + α·KL found so far can
   never win, and the walk in refusal order stops there. Unscored entries are NaN (never
   survivors, never the fallback's winner); ``lazy=False`` scores everything.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from irr_ray.attack.candidates import Candidate, CandidateScore, ScoringSettings
from irr_ray.attack.config import KLBaseline
from irr_ray.attack.prompts import PromptPair
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import (
    ResidualCapture,
    ablate_directions,
    ablate_directions_batched,
    add_activation,
    restart_at,
)
from irr_ray.core.scoring import (
    EncodedPrompts,
    complete_sets,
    kl_before_after,
    last_position_logits,
    refusal_log_odds,
)
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.families import get_layout

if TYPE_CHECKING:
    from irr_ray.attack.config import AttackConfig

log = logging.getLogger(__name__)

_RESTART_RTOL = 1e-3  # restart-vs-full-forward tolerance on induce scores (relative to their scale)


def length_buckets(batch: EncodedPrompts, n_buckets: int) -> list[EncodedPrompts]:
    """Split a left-padded batch into ≤ ``n_buckets`` batches of similar length (rows sorted by
    length, equal counts), each trimmed to its own longest row: padding positions cost compute too."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    out = []
    for rows in torch.tensor_split(order, min(max(1, n_buckets), ids.shape[0])):
        width = int(lengths[rows].max())
        out.append({"input_ids": ids[rows, -width:], "attention_mask": mask[rows, -width:]})
    return out


class FastScorer:
    """Scores the candidates of each iteration against fixed scoring prompts (tokenised once).

    Every forward goes through :meth:`_logits` (to the LM head) or :meth:`_capture` (stops at the
    last wanted layer): the two places a subclass can observe the work done (the bench counts
    FLOPs there, :mod:`irr_ray.bench.attack`).
    """

    def __init__(
        self,
        model: nn.Module,
        harmful: EncodedPrompts,
        harmless: EncodedPrompts,
        refusal_ids: Sequence[int],
        cfg: ScoringSettings,
        batch_rows: int,
        lazy: bool = True,
        n_buckets: int = 1,
        kl_baseline: KLBaseline = "previous",
    ) -> None:
        if kl_baseline not in ("previous", "original"):
            raise ValueError(f"kl_baseline must be 'previous' or 'original', got {kl_baseline!r}")
        self.model = model
        self.device = next(model.parameters()).device
        self.harmful = length_buckets({k: v.to(self.device) for k, v in harmful.items()}, n_buckets)
        self.harmless = length_buckets({k: v.to(self.device) for k, v in harmless.items()}, n_buckets)
        self.n_harmful = sum(b["input_ids"].shape[0] for b in self.harmful)
        self.n_harmless = sum(b["input_ids"].shape[0] for b in self.harmless)
        self.refusal_ids = [int(i) for i in refusal_ids]
        self.cfg = cfg
        self.batch_rows = batch_rows
        self.lazy = lazy
        self.kl_baseline = kl_baseline
        self.restart_ok: bool | None = None  # decided by the first induce pass
        self.num_layers = get_layout(model).num_layers
        # KL "before" logits per harmless bucket, for the Q they were computed under (None = not yet)
        self._before: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self._q = torch.zeros(0, 1)  # the current iteration's Q (set by score)

    @classmethod
    def from_config(cls, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: PromptPair,
                    refusal_ids: Sequence[int], cfg: AttackConfig) -> FastScorer:
        """Tokenise ``prompts`` once and take every knob from an ``AttackConfig``."""
        device = next(model.parameters()).device
        harmful = tokenize_chat(tokenizer, prompts.harmful, max_length=cfg.max_prompt_tokens, device=device)
        harmless = tokenize_chat(tokenizer, prompts.harmless, max_length=cfg.max_prompt_tokens, device=device)
        return cls(model, harmful, harmless, refusal_ids, cfg, cfg.score_batch_rows, **cls.config_kwargs(cfg))

    @classmethod
    def config_kwargs(cls, cfg: AttackConfig) -> dict[str, Any]:
        """The constructor's knobs an ``AttackConfig`` sets (a subclass adds its own)."""
        return {"lazy": not cfg.score_all, "n_buckets": cfg.length_buckets, "kl_baseline": cfg.kl_baseline}

    # ---------------------------------------------------------------------------- forwards

    def _logits(self, batch: EncodedPrompts, repeat: int = 1, from_layer: int = 0) -> torch.Tensor:
        """Last-position logits of ``batch`` repeated ``repeat`` times; ``from_layer`` > 0 when the
        blocks below it are skipped (:func:`~irr_ray.core.hooks.restart_at` active)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if repeat > 1:
            ids, mask = ids.repeat(repeat, 1), mask.repeat(repeat, 1)
        return last_position_logits(self.model, ids, mask)

    @torch.no_grad()
    def _before_logits(self) -> list[torch.Tensor]:
        """The KL baseline per harmless bucket (float64): unattacked (``original``, or K = 1) or
        with the current Q ablated (``previous``) — one batched forward per bucket, cached until
        Q changes (once per attack, resp. once per iteration)."""
        q = self._q if self.kl_baseline == "previous" else self._q[:0]
        if self._before is not None and self._before[0].shape == q.shape and torch.equal(self._before[0], q):
            return self._before[1]
        ablation = ablate_directions(self.model, q.to(self.device)) if q.shape[0] else contextlib.nullcontext()
        with ablation:
            logits = [self._logits(b).double() for b in self.harmless]
        self._before = (q.clone(), logits)
        return logits

    def _chunks(self, n_items: int, rows_per_item: int) -> Iterator[slice]:
        step = max(1, self.batch_rows // max(1, rows_per_item))
        for lo in range(0, n_items, step):
            yield slice(lo, min(n_items, lo + step))

    @torch.no_grad()
    def _refusal(self, sets: torch.Tensor) -> torch.Tensor:
        """Mean refusal log-odds on harmful prompts per set [C, K+1, D] ablated → [C] float64."""
        total = torch.zeros(sets.shape[0], dtype=torch.float64)
        for batch in self.harmful:
            n = batch["input_ids"].shape[0]
            for sl in self._chunks(sets.shape[0], n):
                chunk = sets[sl].to(self.device)
                with ablate_directions_batched(self.model, chunk):
                    logits = self._logits(batch, repeat=chunk.shape[0])
                total[sl] += refusal_log_odds(logits, self.refusal_ids).reshape(chunk.shape[0], n).sum(1).cpu()
        return total / self.n_harmful

    @torch.no_grad()
    def _kl(self, sets: torch.Tensor) -> torch.Tensor:
        """Mean KL(before ‖ after) on harmless prompts per set ablated → [C] float64 (before:
        :meth:`_before_logits`)."""
        total = torch.zeros(sets.shape[0], dtype=torch.float64)
        for batch, before in zip(self.harmless, self._before_logits()):
            n = batch["input_ids"].shape[0]
            for sl in self._chunks(sets.shape[0], n):
                chunk = sets[sl].to(self.device)
                with ablate_directions_batched(self.model, chunk):
                    after = self._logits(batch, repeat=chunk.shape[0])
                kl = kl_before_after(before.repeat(chunk.shape[0], 1), after)
                total[sl] += kl.reshape(chunk.shape[0], n).sum(1).cpu()
        return total / self.n_harmless

    @torch.no_grad()
    def _capture(self, q: torch.Tensor, layers: Sequence[int]) -> dict[int, list[torch.Tensor]]:
        """x_l of the harmless prompts (per bucket, all positions) with Q ablated, for the induce restarts."""
        out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        with ablate_directions(self.model, q.to(self.device)), ResidualCapture(self.model, layers=list(layers)) as cap:
            for batch in self.harmless:
                acts = cap.run(batch["input_ids"], batch["attention_mask"])
                for i, layer in enumerate(layers):
                    out[layer].append(acts[i])
        return out

    @torch.no_grad()
    def _induce_forward(self, layer: int, vectors: torch.Tensor, q: torch.Tensor,
                        cached: list[torch.Tensor] | None) -> torch.Tensor:
        """Mean refusal log-odds per vector [G, D] added at ``layer`` on the harmless prompts, Q
        ablated; restarted from the cached residual (per bucket) when given, else full forwards."""
        g = vectors.shape[0]
        total = torch.zeros(g, dtype=torch.float64)
        for b, batch in enumerate(self.harmless):
            n = batch["input_ids"].shape[0]
            restart = restart_at(self.model, layer, cached[b].repeat(g, 1, 1)) if cached is not None \
                else contextlib.nullcontext()
            with restart, ablate_directions(self.model, q.to(self.device)), \
                    add_activation(self.model, layer, vectors.to(self.device), coeff=self.cfg.steering_coeff):
                logits = self._logits(batch, repeat=g, from_layer=layer if cached is not None else 0)
            total += refusal_log_odds(logits, self.refusal_ids).reshape(g, n).sum(1).cpu()
        return total / self.n_harmless

    def _check_restart(self, fast: torch.Tensor, full: torch.Tensor) -> bool:
        err = float((fast - full).abs().max())
        if err <= _RESTART_RTOL * (1.0 + float(full.abs().max())):
            return True
        log.warning("induce pass: restarting from the cached residual differs from the full forward by "
                    "%.3g on this model; using full forwards (slower)", err)
        return False

    @torch.no_grad()
    def _induce(self, candidates: Sequence[Candidate], which: Sequence[int], q: torch.Tensor,
                cache: dict[int, list[torch.Tensor]]) -> dict[int, float]:
        """Induce scores of ``candidates[which]``, grouped by source layer. On first use the harmless
        residuals at every candidate layer are captured in one partial forward (Q ablated), so each
        later induce pass only runs the blocks from its source layer on."""
        groups: dict[int, list[int]] = {}
        for j in which:
            groups.setdefault(candidates[j].layer, []).append(j)
        if self.restart_ok is not False:
            wanted = sorted({c.layer for c in candidates} - set(cache))
            if wanted and groups:
                cache.update(self._capture(q, wanted))
        out: dict[int, float] = {}
        biggest = max(b["input_ids"].shape[0] for b in self.harmless)
        for layer, idx in sorted(groups.items()):
            cached = cache.get(layer) if self.restart_ok is not False else None
            for sl in self._chunks(len(idx), biggest):
                rows = idx[sl]
                vecs = torch.stack([candidates[j].vector for j in rows]).float()
                scores = self._induce_forward(layer, vecs, q, cached)
                if cached is not None and self.restart_ok is None:
                    self.restart_ok = self._check_restart(scores, self._induce_forward(layer, vecs, q, None))
                    if not self.restart_ok:
                        cached = None
                        scores = self._induce_forward(layer, vecs, q, None)
                out.update({j: float(s) for j, s in zip(rows, scores)})
        return out

    def _find_survivor(self, candidates: Sequence[Candidate], sets: torch.Tensor, q: torch.Tensor,
                       refusal: torch.Tensor, kl: torch.Tensor, induce: dict[int, float],
                       cache: dict[int, list[torch.Tensor]]) -> bool:
        """Walk the candidates in increasing refusal (ties by index), in chunks of 1, 2, 4, …:
        induce first (the cheaper pass), KL where induce passes; stop at the first survivor.
        Fills ``kl`` / ``induce`` in place; False when no candidate survives (all induce known)."""
        order = sorted(range(len(candidates)), key=lambda j: (float(refusal[j]), j))
        lo, size = 0, 1
        while lo < len(order):
            part = order[lo:lo + size]
            induce.update(self._induce(candidates, part, q, cache))
            passing = [j for j in part if induce[j] >= self.cfg.induce_threshold]
            if passing:
                kl[passing] = self._kl(sets[passing])
                if any(float(kl[j]) <= self.cfg.kl_threshold for j in passing):
                    return True
            lo, size = lo + size, size * 2
        return False

    def _bound_fallback(self, sets: torch.Tensor, refusal: torch.Tensor, kl: torch.Tensor) -> None:
        """No survivor: the choice is argmin(refusal + α·KL). With KL ≥ 0 and α ≥ 0 a candidate
        with refusal > the best objective known can never win (not even tie), so KL is scored in
        increasing refusal order, in growing chunks, only while that bound does not rule it out."""
        alpha = self.cfg.kl_alpha
        order = sorted(range(len(refusal)), key=lambda j: (float(refusal[j]), j))
        size = 1
        while True:
            known = [j for j in order if not math.isnan(float(kl[j]))]
            best = min((float(refusal[j]) + alpha * float(kl[j]) for j in known), default=math.inf)
            todo = [j for j in order if math.isnan(float(kl[j])) and float(refusal[j]) <= best][:size]
            if not todo:
                return
            kl[todo] = self._kl(sets[todo])
            size *= 2

    # ---------------------------------------------------------------------------- public

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]:
        """Scores of ``candidates`` given the raw directions ``chosen`` so far (module docstring)."""
        if not candidates:
            return []
        width = candidates[0].vector.shape[-1]
        q = orthonormalize(torch.stack([c.float().cpu() for c in chosen])) if chosen else torch.zeros(0, width)
        self._q = q
        sets = complete_sets(q, torch.stack([c.vector.float().cpu() for c in candidates]))
        refusal = self._refusal(sets)
        kl = torch.full_like(refusal, math.nan)
        induce: dict[int, float] = {}
        cache: dict[int, list[torch.Tensor]] = {}
        if not self.lazy:
            kl = self._kl(sets)
            induce = self._induce(candidates, range(len(candidates)), q, cache)
        elif not self._find_survivor(candidates, sets, q, refusal, kl, induce, cache):
            self._bound_fallback(sets, refusal, kl)
        return [CandidateScore(layer=c.layer, position=c.position, norm=c.norm, refusal_score=float(refusal[j]),
                               kl=float(kl[j]), induce_score=induce.get(j, math.nan))
                for j, c in enumerate(candidates)]
