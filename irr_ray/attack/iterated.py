"""Iterated directional ablation (Arditi et al. 2024, extended to K ≥ 1 by re-extraction).

For K = 1 … k_max, with the directions chosen so far r_1 … r_{K−1} and Q = orthonormalize(r_1 … r_{K−1}):

1. **Candidates.** With Q ablated (three sites, every layer), the raw difference of means
   r[l, p] = μ_harmful[l, p] − μ_harmless[l, p] of the residual stream at block inputs l < (1 − prune)·L
   and positions p ∈ {−5 … −1}, over the extraction prompts.
2. **Scores** (:mod:`irr_ray.attack.fast`, or the one-at-a-time :mod:`irr_ray.attack.reference`):
   refusal log-odds on harmful prompts with span(Q, r) ablated; KL(before ‖ after) on harmless
   prompts; induce-refusal log-odds on harmless prompts with r added at its source layer.
3. **Selection.** Survivors: KL ≤ kl_threshold and induce ≥ induce_threshold; take the lowest
   refusal; with no survivor, argmin(refusal + kl_alpha·KL).
4. **Stop** on norm collapse: ‖r_K‖ < norm_threshold · ‖r_1‖ (nothing left to find).
5. **Evaluate** behaviour (greedy generation + judge) on held-out prompts with the K directions
   ablated → one row of the K-curve.

``attack_rank`` is the smallest K whose harmful refusal is below ``threshold`` (K = 0 included),
or k_max + 1 with ``censored: true``. Progress is saved after every K, so an interrupted attack
resumes where it stopped (the steps are deterministic given the chosen directions).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.attack.behaviour import BehaviourEvaluator, RefusalRates
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.fast import FastScorer
from irr_ray.attack.prompts import PromptPair, PromptSets
from irr_ray.attack.reference import (
    Candidate,
    CandidateScore,
    mean_difference_candidates,
    score_candidates_reference,
    select_direction,
)
from irr_ray.config import config_dict, stable_hash
from irr_ray.core.directions import load_directions, orthonormalize, save_directions
from irr_ray.errors import IrrRayError
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.families import get_layout, refusal_tokens_for
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)

MODEL_REFUSAL_TOKENS_KEY = "irr_ray_refusal_tokens"


class Scorer(Protocol):
    """Scores candidates given the raw directions chosen so far (fast or reference)."""

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]: ...


class ReferenceScorer:
    """:func:`irr_ray.attack.reference.score_candidates_reference` behind the :class:`Scorer` interface."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: PromptPair,
                 refusal_ids: Sequence[int], cfg: AttackConfig) -> None:
        self.model, self.tokenizer, self.prompts, self.refusal_ids, self.cfg = model, tokenizer, prompts, refusal_ids, cfg

    def score(self, candidates: Sequence[Candidate], chosen: Sequence[torch.Tensor]) -> list[CandidateScore]:
        return score_candidates_reference(self.model, self.tokenizer, self.prompts.harmful, self.prompts.harmless,
                                          candidates, chosen, self.cfg, self.refusal_ids,
                                          batch_size=self.cfg.extract_batch_size)


# ---------------------------------------------------------------------------- pieces


def refusal_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      configured: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """Refusal tokens: the config's, else the model config's ``irr_ray_refusal_tokens``, else the
    family's (:func:`irr_ray.models.families.refusal_tokens_for`). Each string maps to the first
    token of its encoding (no special tokens); ints are token ids already."""
    tokens: Sequence[Any] | None = configured
    if tokens is None:
        tokens = getattr(model.config, MODEL_REFUSAL_TOKENS_KEY, None)
    if not tokens:
        tokens = refusal_tokens_for(get_layout(model).model_type)
    names, ids = [], []
    for tok in tokens:
        if isinstance(tok, int):
            ids.append(int(tok))
            names.append(tokenizer.convert_ids_to_tokens(int(tok)))
            continue
        enc = tokenizer.encode(str(tok), add_special_tokens=False)
        if not enc:
            raise IrrRayError(f"refusal token {tok!r} encodes to nothing with this tokenizer")
        names.append(str(tok))
        ids.append(int(enc[0]))
    return names, sorted(set(ids))


def tokenise_batches(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], batch_size: int,
                     max_length: int | None, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Chat-template + left-pad ``prompts`` in batches, once (reused by every iteration)."""
    return [tokenize_chat(tokenizer, prompts[i:i + batch_size], max_length=max_length, device=device)
            for i in range(0, len(prompts), batch_size)]


def attack_rank(curve: Sequence[dict[str, Any]], threshold: float, k_max: int) -> tuple[int, bool]:
    """Smallest K with harmful refusal < threshold, else (k_max + 1, censored)."""
    for row in curve:
        if row["refusal_harmful"] < threshold:
            return int(row["K"]), False
    return k_max + 1, True


# ---------------------------------------------------------------------------- state


@dataclass
class AttackState:
    """What a resumed attack needs: the raw chosen directions and the curve so far."""

    raw: list[torch.Tensor] = field(default_factory=list)  # r_1 … r_K, [D] each
    curve: list[dict[str, Any]] = field(default_factory=list)  # K = 0 … K
    stop_reason: str | None = None
    timings: list[dict[str, float]] = field(default_factory=list)
    examples: dict[str, Any] = field(default_factory=dict)  # str(K) -> a few judged replies

    @property
    def k(self) -> int:
        return len(self.raw)

    def q(self, width: int) -> torch.Tensor:
        return orthonormalize(torch.stack(self.raw)) if self.raw else torch.zeros(0, width)


def progress_key(model_key: str, cfg: AttackConfig) -> str:
    """What the saved steps depend on: the model and the config, except the budget knobs."""
    conf = config_dict(cfg)
    for budget in ("k_max", "stop_below_threshold"):
        conf.pop(budget)
    return stable_hash({"model": model_key, "config": conf})


class Progress:
    """Per-K checkpoint of an attack in ``work_dir`` (state.json + raw.safetensors), keyed by a
    hash of the model and the config: a different config starts over."""

    def __init__(self, work_dir: Path, key: str) -> None:
        self.dir = work_dir
        self.key = key

    def load(self) -> AttackState:
        meta = self.dir / "state.json"
        if not meta.is_file():
            return AttackState()
        data = json.loads(meta.read_text())
        if data.get("key") != self.key:
            log.info("attack progress in %s is for another model/config; starting over", self.dir)
            return AttackState()
        if data.get("stop_reason") in ("k_max", "below_threshold"):  # budget-type stops: a rerun may go on
            data["stop_reason"] = None
        raw = []
        if data["k"] > 0:
            stack, _ = load_directions(self.dir / "raw.safetensors")
            raw = [row.clone() for row in stack[: data["k"]]]
        return AttackState(raw=raw, curve=data["curve"], stop_reason=data.get("stop_reason"),
                           timings=data.get("timings", []), examples=data.get("examples", {}))

    def save(self, state: AttackState) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if state.raw:
            save_directions(self.dir / "raw.safetensors", torch.stack(state.raw), {"kind": "raw"})
        write_json_atomic(self.dir / "state.json", {"key": self.key, "k": state.k, "curve": state.curve,
                                                     "stop_reason": state.stop_reason,
                                                     "timings": state.timings, "examples": state.examples})


# ---------------------------------------------------------------------------- the loop


def make_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, score: PromptPair,
                refusal_ids: Sequence[int], cfg: AttackConfig) -> Scorer:
    """The configured candidate scorer (``implementation``: fast or reference)."""
    if cfg.implementation == "reference":
        return ReferenceScorer(model, tokenizer, score, refusal_ids, cfg)
    device = next(model.parameters()).device
    harmful = tokenize_chat(tokenizer, score.harmful, max_length=cfg.max_prompt_tokens, device=device)
    harmless = tokenize_chat(tokenizer, score.harmless, max_length=cfg.max_prompt_tokens, device=device)
    return FastScorer(model, harmful, harmless, refusal_ids, cfg, cfg.score_batch_rows, lazy=not cfg.score_all,
                      n_buckets=cfg.length_buckets)


@dataclass
class AttackResult:
    curve: list[dict[str, Any]]
    directions: torch.Tensor  # [K, D] orthonormal rows, in order
    attack_rank: int
    censored: bool
    stop_reason: str
    refusal_tokens: list[str]
    timings: list[dict[str, float]]
    examples: dict[str, Any]

    def to_json(self, model_name: str, cfg: AttackConfig) -> dict[str, Any]:
        """``attack.json`` exactly as design.md's "Attack result" contract."""
        return {"model": model_name, "config": config_dict(cfg), "threshold": cfg.threshold,
                "attack_rank": self.attack_rank, "censored": self.censored, "curve": self.curve}


def run_iterated_attack(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptSets,
    cfg: AttackConfig,
    evaluator: BehaviourEvaluator,
    work_dir: Path | None = None,
    k0: RefusalRates | None = None,
    model_key: str = "",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> AttackResult:
    """Run the attack (module docstring) up to ``cfg.k_max``; ``k0`` reuses a K=0 evaluation already
    made; ``work_dir`` holds per-K progress for resuming; ``on_step`` sees each new curve row."""
    device = next(model.parameters()).device
    num_layers = get_layout(model).num_layers
    width = int(model.config.hidden_size)
    layers, positions = cfg.candidate_layers(num_layers), list(cfg.positions)
    names, refusal_ids = refusal_token_ids(model, tokenizer, cfg.refusal_tokens)
    progress = Progress(work_dir, progress_key(model_key, cfg)) if work_dir else None
    state = progress.load() if progress else AttackState()
    if state.k > cfg.k_max:  # saved with a larger budget: keep the first k_max steps
        state.raw, state.curve = state.raw[: cfg.k_max], state.curve[: cfg.k_max + 1]
        state.timings = state.timings[: cfg.k_max]
    if state.k:
        log.info("resuming the attack at K=%d", state.k + 1)

    if not state.curve:
        rates = k0 if k0 is not None else evaluator.run(None)
        state.curve.append({"K": 0, **rates.row()})
        state.examples["0"] = rates.examples
        if progress:
            progress.save(state)
        if on_step:
            on_step(state.curve[-1])

    extract_h = tokenise_batches(tokenizer, prompts.extract.harmful, cfg.extract_batch_size, cfg.max_prompt_tokens, device)
    extract_l = tokenise_batches(tokenizer, prompts.extract.harmless, cfg.extract_batch_size, cfg.max_prompt_tokens, device)
    scorer: Scorer | None = None

    while state.stop_reason is None and state.k < cfg.k_max:
        if cfg.stop_below_threshold and state.curve[-1]["refusal_harmful"] < cfg.threshold:
            state.stop_reason = "below_threshold"
            break
        scorer = scorer or make_scorer(model, tokenizer, prompts.score, refusal_ids, cfg)
        k = state.k + 1
        t0 = time.perf_counter()
        q = state.q(width).to(device)
        candidates = mean_difference_candidates(model, extract_h, extract_l, layers, positions,
                                                q if state.k else None)
        t1 = time.perf_counter()
        if not candidates:
            state.stop_reason = "norm_collapse"
            log.info("K=%d: every difference of means is zero; stopping", k)
            break
        scores = scorer.score(candidates, [r.to(device) for r in state.raw])
        t2 = time.perf_counter()
        idx = select_direction(scores, cfg)
        best = scores[idx]
        if state.raw and best.norm < cfg.norm_threshold * float(state.raw[0].double().norm()):
            state.stop_reason = "norm_collapse"
            log.info("K=%d: norm %.3g collapsed below %.3g of the first; stopping", k, best.norm, cfg.norm_threshold)
            break
        state.raw.append(candidates[idx].vector.detach().float().cpu())
        rates = evaluator.run(state.q(width))
        t3 = time.perf_counter()
        row = {"K": k, **rates.row(), "layer": best.layer, "position": best.position, "norm": best.norm,
               "refusal_score": best.refusal_score, "kl": best.kl, "induce_score": best.induce_score}
        state.curve.append(row)
        state.examples[str(k)] = rates.examples
        state.timings.append({"K": k, "extract_s": t1 - t0, "score_s": t2 - t1, "eval_s": t3 - t2,
                              "survivors": float(sum(s.survives(cfg) for s in scores))})
        log.info("K=%d: layer %d pos %d refusal %.3f kl %.3f induce %.3f | harmful %.2f harmless %.2f",
                 k, row["layer"], row["position"], row["refusal_score"], row["kl"], row["induce_score"],
                 row["refusal_harmful"], row["refusal_harmless"])
        if progress:
            progress.save(state)
        if on_step:
            on_step(row)

    if state.stop_reason is None:
        state.stop_reason = "k_max"
    if progress:
        progress.save(state)
    rank, censored = attack_rank(state.curve, cfg.threshold, cfg.k_max)
    return AttackResult(curve=state.curve, directions=state.q(width), attack_rank=rank, censored=censored,
                        stop_reason=state.stop_reason, refusal_tokens=names, timings=state.timings,
                        examples=state.examples)
