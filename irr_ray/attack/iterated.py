"""Iterated directional ablation (Arditi et al. 2024, extended to K ≥ 1 by re-extraction).

For K = 1 … k_max, with the directions chosen so far r_1 … r_{K−1} and Q = orthonormalize(r_1 … r_{K−1}):

1. **Candidates** (:mod:`irr_ray.attack.candidates`). With Q ablated (three sites, every layer), the
   raw difference of means r[l, p] = μ_harmful[l, p] − μ_harmless[l, p] of the residual stream at
   the candidate layers (``candidate_layers``: the method's block outputs below int(0.8·L) by
   default, Arditi et al.'s block inputs as an option) and positions p ∈ {−5 … −1}.
2. **Scores** (:mod:`irr_ray.attack.scoring`: ``fast``, or the one-at-a-time ``reference``):
   refusal log-odds on harmful prompts with span(Q, r) ablated; KL(before ‖ after) on harmless
   prompts, "before" = the model under the current ablation Q (``kl_baseline: previous``, the
   method's) or unattacked (``original``); induce-refusal log-odds on harmless prompts with r
   added at its source layer.
3. **Selection.** Survivors: KL ≤ kl_threshold and induce ≥ induce_threshold; take the lowest
   refusal; with no survivor, argmin(refusal + kl_alpha·KL).
4. **Stop** on norm collapse: ‖r_K‖ < norm_threshold · ‖r_1‖ (nothing left to find).
5. **Evaluate** behaviour (greedy generation + judge + the degenerate rule,
   :mod:`irr_ray.attack.behaviour`) on held-out prompts with the K directions ablated → one row of
   the K-curve (:class:`irr_ray.contracts.CurveRow`), which also records how many candidates
   survived the filters and whether the fallback chose.

``attack_rank`` is the smallest K whose harmful refusal is below ``threshold`` (K = 0 included),
or k_max + 1 with ``censored: true`` — the method's number, kept unchanged. Next to it the
**verdict** (:mod:`irr_ray.core.verdict`) reads the whole curve against the source model's K=0
harmless refusal: broken, robust, collapsed, degenerate or inconclusive, with ``robust_k`` and the
stop reason. Progress is saved after every K, so an interrupted attack resumes where it stopped
(the steps are deterministic given the chosen directions).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.attack.behaviour import BehaviourEvaluator
from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.config import SUITE_SECTIONS, AttackConfig
from irr_ray.attack.prompts import PromptSets
from irr_ray.attack.scoring import Scorer, make_scorer
from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import AttackDoc, CurveRow, VerdictDoc
from irr_ray.core.directions import load_directions, orthonormalize, save_directions
from irr_ray.core.verdict import Verdict, VerdictRules, judge_curve
from irr_ray.errors import IrrRayError
from irr_ray.models.families import get_layout, refusal_tokens_for
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)

MODEL_REFUSAL_TOKENS_KEY = "irr_ray_refusal_tokens"


# ---------------------------------------------------------------------------- pieces


def refusal_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      configured: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """Refusal tokens: the config's, else the model config's ``irr_ray_refusal_tokens``, else the
    family's (:func:`irr_ray.models.families.refusal_tokens_for`). Each string maps to the first
    token of its encoding (no special tokens); ints are token ids already."""
    # A token the tokenizer does not know maps to its unknown token, whose probability is that of
    # every out-of-vocabulary word: a configured one is an error; a family default one is dropped
    # (e.g. Qwen's "As" with a word-level tokenizer), unless none is left. A first sub-token that
    # is only a fragment of the word is fine.
    tokens: Sequence[Any] | None = configured
    source, is_default = "attack.refusal_tokens", False
    if tokens is None:
        tokens = getattr(model.config, MODEL_REFUSAL_TOKENS_KEY, None)
        source = f"the model config's {MODEL_REFUSAL_TOKENS_KEY}"
    if not tokens:
        family = get_layout(model).model_type
        tokens, source, is_default = refusal_tokens_for(family), f"the {family} family default", True
    unk_ids = {tokenizer.unk_token_id} - {None}
    backend_unk = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None), "unk_token", None)
    if isinstance(backend_unk, str) and tokenizer.convert_tokens_to_ids(backend_unk) is not None:
        unk_ids.add(tokenizer.convert_tokens_to_ids(backend_unk))
    unk_names = {t for t in (tokenizer.unk_token, backend_unk) if isinstance(t, str)}
    how = ("set refusal tokens in its vocabulary with the YAML key attack.refusal_tokens, or --set "
           "refusal_tokens='[\"I\"]' on irr-ray attack / eval (--set attack.refusal_tokens='[\"I\"]' on irr-ray run)")
    names, ids = [], []
    for tok in tokens:
        if isinstance(tok, int):
            first, name = int(tok), tokenizer.convert_ids_to_tokens(int(tok))
        else:
            enc = tokenizer.encode(str(tok), add_special_tokens=False)
            if not enc:
                raise IrrRayError(f"refusal_tokens: {tok!r} (from {source}) encodes to nothing with this tokenizer")
            first, name = int(enc[0]), str(tok)
        if first in unk_ids or tokenizer.convert_ids_to_tokens(first) in unk_names:
            if is_default:
                log.warning("refusal token %r (%s) is unknown to the tokenizer: not used", tok, source)
                continue
            raise IrrRayError(
                f"refusal_tokens: {tok!r} (from {source}) maps to the tokenizer's unknown token "
                f"{tokenizer.convert_ids_to_tokens(first)!r} (id {first}); {how}")
        names.append(name)
        ids.append(first)
    if not ids:
        raise IrrRayError(f"refusal_tokens: every one of {list(tokens)!r} (from {source}) maps to the "
                          f"tokenizer's unknown token; {how}")
    return names, sorted(set(ids))



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


# Generation knobs that change only how fast the same replies and scores come (plain vs fast path,
# `irr-ray bench attack --stage`): progress saved under one is valid under the other.
SPEED_ONLY_GENERATION = ("engine", "reuse_prefill")


def progress_key(model_key: str, cfg: AttackConfig) -> str:
    """What the saved steps depend on: the model and the config, except the budget knobs and the
    speed-only generation knobs (:data:`SPEED_ONLY_GENERATION`)."""
    conf = config_dict(cfg)
    for budget in ("k_max", "stop_below_threshold", *SUITE_SECTIONS):  # the other attacks' settings too
        conf.pop(budget)
    for knob in SPEED_ONLY_GENERATION:
        conf["generation"].pop(knob, None)
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

    verdict: Verdict

    def document(self, model_name: str, cfg: AttackConfig) -> AttackDoc:
        """``attack.json`` (:class:`irr_ray.contracts.AttackDoc`)."""
        return AttackDoc(model=model_name, config=config_dict(cfg), threshold=cfg.threshold,
                         attack_rank=self.attack_rank, censored=self.censored, stop_reason=self.stop_reason,
                         verdict=VerdictDoc(**asdict(self.verdict)), curve=[CurveRow(**r) for r in self.curve])


def verdict_rules(cfg: AttackConfig) -> VerdictRules:
    """The verdict thresholds of an attack config."""
    return VerdictRules(threshold=cfg.threshold, **cfg.verdict.model_dump())


def run_iterated_attack(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: PromptSets,
    cfg: AttackConfig,
    evaluator: BehaviourEvaluator,
    work_dir: Path | None = None,
    k0: dict[str, Any] | None = None,
    model_key: str = "",
    on_step: Callable[[dict[str, Any]], None] | None = None,
    source_refusal_harmless: float | None = None,
) -> AttackResult:
    """Run the attack (module docstring) up to ``cfg.k_max``; ``k0`` reuses a K=0 curve row already
    evaluated; ``work_dir`` holds per-K progress for resuming; ``on_step`` sees each new curve row;
    ``source_refusal_harmless``: the source model's K=0 harmless refusal the verdict is measured
    against (default: this model's own)."""
    device = next(model.parameters()).device
    num_layers = get_layout(model).num_layers
    width = int(model.config.hidden_size)
    layers, positions = cfg.candidate_layer_indices(num_layers), list(cfg.positions)
    names, refusal_ids = refusal_token_ids(model, tokenizer, cfg.refusal_tokens)
    progress = Progress(work_dir, progress_key(model_key, cfg)) if work_dir else None
    state = progress.load() if progress else AttackState()
    if state.k > cfg.k_max:  # saved with a larger budget: keep the first k_max steps
        state.raw, state.curve = state.raw[: cfg.k_max], state.curve[: cfg.k_max + 1]
        state.timings = state.timings[: cfg.k_max]
    if state.k:
        log.info("resuming the attack at K=%d", state.k + 1)

    if not state.curve:
        if k0 is not None:
            state.curve.append({**k0, "K": 0})
        else:
            rates = evaluator.run(None)
            state.curve.append({"K": 0, **rates.row()})
            state.examples["0"] = rates.examples
        if progress:
            progress.save(state)
        if on_step:
            on_step(state.curve[-1])

    extract_h = encode_batches(tokenizer, prompts.extract.harmful, cfg.extract_batch_size, device, cfg.max_prompt_tokens)
    extract_l = encode_batches(tokenizer, prompts.extract.harmless, cfg.extract_batch_size, device, cfg.max_prompt_tokens)
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
        survivors = sum(s.survives(cfg) for s in scores)
        row = {"K": k, **rates.row(), "layer": best.layer, "position": best.position, "norm": best.norm,
               "refusal_score": best.refusal_score, "kl": best.kl, "induce_score": best.induce_score,
               "survivors": survivors, "fallback": survivors == 0}
        state.curve.append(row)
        state.examples[str(k)] = rates.examples
        state.timings.append({"K": k, "extract_s": t1 - t0, "score_s": t2 - t1, "eval_s": t3 - t2,
                              "survivors": float(survivors)})
        log.info("K=%d: layer %d pos %d refusal %.3f kl %.3f induce %.3f survivors %d | harmful refused %.2f "
                 "degenerate %.2f | harmless refused %.2f", k, row["layer"], row["position"], row["refusal_score"],
                 row["kl"], row["induce_score"], survivors, row["refusal_harmful"], row["degenerate_harmful"],
                 row["refusal_harmless"])
        if progress:
            progress.save(state)
        if on_step:
            on_step(row)

    if state.stop_reason is None:
        state.stop_reason = "k_max"
    if progress:
        progress.save(state)
    rank, censored = attack_rank(state.curve, cfg.threshold, cfg.k_max)
    source = state.curve[0]["refusal_harmless"] if source_refusal_harmless is None else source_refusal_harmless
    verdict = judge_curve(state.curve, source, state.stop_reason, cfg.k_max, verdict_rules(cfg))
    log.info("verdict: %s (%s); attack_rank %s", verdict.verdict, verdict.reason, rank)
    return AttackResult(curve=state.curve, directions=state.q(width), attack_rank=rank, censored=censored,
                        stop_reason=state.stop_reason, refusal_tokens=names, timings=state.timings,
                        examples=state.examples, verdict=verdict)
