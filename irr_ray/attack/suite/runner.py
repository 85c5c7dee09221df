"""Run one attack of the suite on one model: a per-budget curve, its verdict, resumable per budget.

``<out>/`` = ``attacks/<model>/<attack>/`` (written at once when every budget is done):
``attack.json`` (:class:`irr_ray.contracts.AttackDoc` with ``attack`` / ``budget_axis``: one
:class:`~irr_ray.contracts.CurveRow` per budget, ``K`` = the budget, row 0 = the model as it is),
``attack_log.json`` (per-budget facts the attack reported, timings, example replies) and the
attack's own artifacts. Every budget is evaluated exactly like a step of the method's attack
(:class:`irr_ray.attack.behaviour.BehaviourEvaluator`: same held-out prompts, judge, degenerate
rule with the source model as reference, first-token refusal and KL), so curves of different
attacks compare row by row, and the verdict follows the same rules (:mod:`irr_ray.core.verdict`).

K = 0 comes from the model's finished ``dim`` attack (``attacks/<model>/k0.json``) when there is
one, else it is evaluated here once. ``<out>/../.<attack>.progress/`` holds the finished budgets'
rows (and whatever the attack saves to resume its own work); a rerun continues after the last
finished budget, and a rerun after success does nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.evaluate import evaluate_k0, make_evaluator
from irr_ray.attack.iterated import attack_rank, progress_key, refusal_token_ids, verdict_rules
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.attack.run import (
    ATTACK_JSON,
    DIRECTIONS,
    K0_JSON,
    LOG_JSON,
    SourceBaseline,
    _load,
    _reference,
    model_identity_key,
    progress_dir,
)
from irr_ray.attack.suite import attack_class
from irr_ray.attack.suite.base import AttackContext, SuiteAttack
from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import AttackDoc, CurveRow, K0Doc, VerdictDoc
from irr_ray.core.directions import load_directions
from irr_ray.core.verdict import judge_curve
from irr_ray.utils.files import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)


def suite_progress_key(model_key: str, name: str, cfg: AttackConfig) -> str:
    """What a suite attack's saved budgets depend on: the model, its settings (without the budget
    schedule) and the evaluation settings shared with ``dim`` (without dim's own budget)."""
    settings = config_dict(getattr(cfg, name))
    settings.pop("budgets")
    return stable_hash({"eval": progress_key(model_key, cfg), "attack": name, "settings": settings})


def _dim_k0(dim_dir: Path | None, cfg: AttackConfig) -> K0Doc | None:
    """The K=0 evaluation of the model's finished dim attack, when it ran with the same evaluation
    settings (the config minus budgets and the suite's sections)."""
    if dim_dir is None or not (dim_dir / ATTACK_JSON).is_file() or not (dim_dir / K0_JSON).is_file():
        return None
    doc = K0Doc.read(dim_dir / K0_JSON)
    if doc.config is None or progress_key("", AttackConfig.model_validate(doc.config)) != progress_key("", cfg):
        log.info("%s was evaluated with other settings: K=0 is evaluated again", dim_dir / K0_JSON)
        return None
    return doc


def _dim_directions(dim_dir: Path | None) -> tuple[torch.Tensor | None, list[int] | None]:
    if dim_dir is None or not (dim_dir / DIRECTIONS).is_file():
        return None, None
    q, meta = load_directions(dim_dir / DIRECTIONS)
    layers = json.loads(meta.get("layers", "null")) if meta else None
    return q, layers


def run_suite_attack(
    name: str,
    model_path: str,
    data_dir: str | Path,
    cfg: AttackConfig,
    out_dir: str | Path,
    *,
    judge_model: str | None = None,
    source: SourceBaseline | None = None,
    base_model: str | None = None,
    dim_dir: str | Path | None = None,
    force: bool = False,
) -> AttackDoc:
    """Attack ``model_path`` with the suite attack ``name`` (module docstring); returns ``attack.json``."""
    out = Path(out_dir).resolve()
    if (out / ATTACK_JSON).is_file() and not force:
        log.info("%s exists: %s already finished", out / ATTACK_JSON, name)
        return AttackDoc.read(out / ATTACK_JSON)
    attack: SuiteAttack = attack_class(name)(getattr(cfg, name))
    budgets = attack.budgets()
    work = progress_dir(out)
    t0 = time.perf_counter()
    prompts = load_prompt_sets(data_dir, cfg)
    model, tokenizer = _load(model_path, cfg)
    mkey = model_identity_key(model_path)
    key = suite_progress_key(mkey, name, cfg)
    dim = Path(dim_dir).resolve() if dim_dir else None

    state_path = work / "state.json"
    state: dict[str, Any] = {"key": key, "curve": [], "examples": {}, "timings": [], "k0": None}
    if state_path.is_file():
        saved = json.loads(state_path.read_text())
        if saved.get("key") == key:
            state = saved
        else:
            log.info("%s progress in %s is for another model/config; starting over", name, work)
            shutil.rmtree(work, ignore_errors=True)

    k0_doc = K0Doc.model_validate(state["k0"]) if state["k0"] else _dim_k0(dim, cfg)
    reference, bound = _reference(model_path, cfg, source)
    evaluator, spec = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg, judge_model, reference,
                                     bound if k0_doc is None else k0_doc.nll_bound)
    if k0_doc is None:
        _, k0_doc = evaluate_k0(model, tokenizer, model_path, prompts, cfg, evaluator, judge=spec)
    if evaluator.vllm is not None:  # generation.backend=vllm served K = 0; the budgets' interventions run on hf
        evaluator.close()
    state["k0"] = k0_doc.to_json()
    if not state["curve"]:
        state["curve"] = [{**k0_doc.row.model_dump(exclude_none=True), "K": 0}]
    _save(state_path, state)

    q, layers = _dim_directions(dim)
    _, refusal_ids = refusal_token_ids(model, tokenizer, cfg.refusal_tokens)
    ctx = AttackContext(model=model, tokenizer=tokenizer, prompts=prompts, cfg=cfg, refusal_ids=refusal_ids,
                        work_dir=work, seed=cfg.seed, base_model=base_model, data_dir=Path(data_dir),
                        dim_directions=q, dim_layers=layers, judge=evaluator.judge)
    done = {int(r["K"]) for r in state["curve"]}
    stepped, stop_reason = False, "k_max"
    for budget in budgets:
        last = max(state["curve"], key=lambda r: r["K"])
        if cfg.stop_below_threshold and last["refusal_harmful"] < cfg.threshold:
            stop_reason = "below_threshold"  # the verdict is decided at the first crossing; the rest is skipped
            break
        if budget in done:
            continue
        t1 = time.perf_counter()
        step = attack.step(ctx, budget)
        stepped = True
        t2 = time.perf_counter()
        rates = evaluator.run(intervention=step.intervention)
        t3 = time.perf_counter()
        row = {"K": budget, **rates.row(), "info": step.info}
        state["curve"].append(row)
        state["examples"][str(budget)] = rates.examples
        state["timings"].append({"K": budget, "attack_s": t2 - t1, "eval_s": t3 - t2})
        _save(state_path, state)
        log.info("%s budget %d (%s): harmful refused %.2f degenerate %.2f | harmless refused %.2f", name, budget,
                 attack.budget_axis, row["refusal_harmful"], row["degenerate_harmful"], row["refusal_harmless"])

    curve = sorted(state["curve"], key=lambda r: r["K"])
    curve = [r for r in curve if r["K"] == 0 or r["K"] in budgets]
    budget_max = budgets[-1]
    rank, censored = attack_rank(curve, cfg.threshold, budget_max)
    s_harmless = curve[0]["refusal_harmless"] if source is None else source.refusal_harmless
    verdict = judge_curve(curve, s_harmless, stop_reason, budget_max, verdict_rules(cfg), axis=attack.budget_axis)
    local = Path(model_path).expanduser()
    doc = AttackDoc(model=str(local.resolve()) if local.exists() else model_path, config=config_dict(cfg),
                    threshold=cfg.threshold, attack_rank=rank, censored=censored, stop_reason=stop_reason,
                    verdict=VerdictDoc(**verdict.__dict__), curve=[CurveRow(**r) for r in curve], attack=name,
                    budget_axis=attack.budget_axis, budget_max=budget_max)
    log.info("%s verdict: %s (%s)", name, verdict.verdict, verdict.reason)
    log_doc = {"model": model_path, "attack": name, "budget_axis": attack.budget_axis, "judge": spec,
               "source_model": None if source is None else source.path, "nll_bound": k0_doc.nll_bound,
               "prompt_sets": prompts.sizes(), "timings": state["timings"], "wall_s": time.perf_counter() - t0,
               "info": {str(r["K"]): r.get("info") for r in curve[1:]},
               "examples": {"0": k0_doc.examples, **state["examples"]}}
    reached = [int(r["K"]) for r in curve[1:]]
    if not stepped and reached:  # every budget finished in an earlier run: reload the attack's saved state (no work)
        attack.step(ctx, max(reached))
    with atomic_dir(out) as tmp:
        doc.write(tmp / ATTACK_JSON)
        write_json_atomic(tmp / LOG_JSON, log_doc)
        attack.write_artifacts(tmp)
    shutil.rmtree(work, ignore_errors=True)
    return doc


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, state)
