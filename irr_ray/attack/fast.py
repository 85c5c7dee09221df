"""Fast candidate scoring: many candidates per forward pass (the attack's hot path).

Computes exactly what :func:`irr_ray.attack.reference.score_candidates_reference` computes, for the
candidates r_c (raw differences of means) of one iteration, given the orthonormalised stack Q [K, D]
of the directions chosen so far:

* ``refusal_score`` mean refusal log-odds on the harmful scoring prompts with span(Q, r_c) ablated;
* ``kl``            mean KL(before ‖ after) on the harmless prompts ("before" = unattacked model);
* ``induce_score``  mean refusal log-odds on the harmless prompts, Q ablated, coeff·r_c added at
                    the block input of r_c's source layer.

Where the speed comes from:

1. **Per-row directions.** Batch rows carry their own set [Q; u_c], u_c = r_c with Q projected out
   and normalised (the last row of orthonormalize([Q; r_c]), for all candidates at once), through
   :func:`irr_ray.core.hooks.ablate_directions_batched`: several candidates per forward.
2. **Logits at the last position only** (``logits_to_keep=1``): the LM head costs B·D·V, not B·T·D·V.
3. **Tokenisation once** per attack, and the unattacked "before" distributions once per attack;
   the prompts sorted into length buckets, each padded only to its own longest prompt.
4. **Induce from the cached residual.** The induce pass equals the plain Q-ablated forward up to
   the source layer s, so x_s of the harmless prompts is captured once per iteration and blocks
   before s are skipped: they become the identity while a pre-hook (running before the ablation
   and addition hooks) puts x_s back at block s. Candidates of one layer share the capture and
   their forwards. A one-off comparison with the full forward guards this; a model where it does
   not hold falls back to full forwards, with a warning.
5. **Only what the choice needs** (``lazy``, the default). The choice is the lowest refusal score
   among survivors (KL ≤ threshold, induce ≥ threshold), else argmin(refusal + α·KL). So refusal
   is scored for every candidate; then, in increasing order of refusal (ties by index, as
   :func:`~irr_ray.attack.reference.select_direction`) and in growing chunks, the cheaper filter
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
from typing import Any

import torch
from torch import nn

from irr_ray.attack.reference import Candidate, CandidateScore, ScoringSettings, refusal_log_odds
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import (
    ResidualCapture,
    ablate_directions,
    ablate_directions_batched,
    add_activation,
    left_pad_position_ids,
)
from irr_ray.models.families import get_layout

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
_RESTART_RTOL = 1e-3  # restart-vs-full-forward tolerance on induce scores (relative to their scale)


def kl_before_after(logits_before: torch.Tensor, logits_after: torch.Tensor) -> torch.Tensor:
    """KL(p_before ‖ p_after) per row of [B, V] logits → [B] (float64)."""
    lp_b = torch.log_softmax(logits_before.double(), dim=-1)
    lp_a = torch.log_softmax(logits_after.double(), dim=-1)
    return (lp_b.exp() * (lp_b - lp_a)).sum(-1)


def complete_sets(q: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Per-candidate orthonormal sets [C, K+1, D]: the rows of ``q`` [K, D], then u_c ∝ r_c − (r_c·Qᵀ)Q.

    Equals ``orthonormalize(cat(q, r_c))`` for every candidate (QR keeps Q's rows; sign alignment
    gives u_c·r_c > 0) without a QR per candidate. A candidate inside span(Q) gets a zero row.
    """
    r = raw.double()
    qd = q.double().to(r.device)
    u = r - (r @ qd.T) @ qd if qd.shape[0] else r
    norms = u.norm(dim=-1, keepdim=True)
    keep = norms > 1e-5 * r.norm(dim=-1, keepdim=True)
    u = torch.where(keep, u / norms.clamp_min(1e-300), torch.zeros_like(u))
    sets = torch.cat([qd.unsqueeze(0).expand(r.shape[0], -1, -1), u.unsqueeze(1)], dim=1)
    return sets.to(raw.dtype)


def last_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the last position only, [B, V]; positions count real tokens."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=left_pad_position_ids(attention_mask), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1, :]


@contextlib.contextmanager
def restart_at(model: nn.Module, layer: int, residual: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``layer`` … L−1: earlier blocks become the identity, and a pre-hook that runs
    before every other hook replaces block ``layer``'s input by ``residual`` [B, T, D]."""
    layout = get_layout(model)
    skipped = [layout.blocks[i] for i in range(layer)]

    def identity(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def put_back(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (residual, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": residual}

    handle = layout.blocks[layer].register_forward_pre_hook(put_back, with_kwargs=True, prepend=True)
    try:
        for block in skipped:
            block.forward = identity  # an instance attribute shadows the class's forward
        yield
    finally:
        handle.remove()
        for block in skipped:
            block.__dict__.pop("forward", None)


def length_buckets(batch: Batch, n_buckets: int) -> list[Batch]:
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
    """Scores the candidates of each iteration against fixed scoring prompts (tokenised once)."""

    def __init__(
        self,
        model: nn.Module,
        harmful: Batch,
        harmless: Batch,
        refusal_ids: Sequence[int],
        cfg: ScoringSettings,
        batch_rows: int,
        lazy: bool = True,
        n_buckets: int = 1,
    ) -> None:
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
        self.restart_ok: bool | None = None  # decided by the first induce pass
        self.num_layers = get_layout(model).num_layers
        # (rows, sequence length, blocks run, rows through the LM head) per forward: the bench's FLOP count
        self.forward_log: list[tuple[int, int, int, int]] = []
        with torch.no_grad():  # the unattacked next-token logits, once per attack
            self.before = [self._logits(b).double() for b in self.harmless]

    # ---------------------------------------------------------------------------- forwards

    def _logits(self, batch: Batch, repeat: int = 1, from_layer: int = 0) -> torch.Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if repeat > 1:
            ids, mask = ids.repeat(repeat, 1), mask.repeat(repeat, 1)
        self.forward_log.append((ids.shape[0], ids.shape[1], self.num_layers - from_layer, ids.shape[0]))
        return last_logits(self.model, ids, mask)

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
        """Mean KL(before ‖ after) on harmless prompts per set ablated → [C] float64."""
        total = torch.zeros(sets.shape[0], dtype=torch.float64)
        for batch, before in zip(self.harmless, self.before):
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
                self.forward_log.append((*batch["input_ids"].shape, max(layers), 0))  # stops at the last layer
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
