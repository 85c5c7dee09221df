"""optuna_abliteration: heretic's weighted abliteration search on the real organism.

Required by the issue: the chosen trial at KL ≤ 0.1 refuses no more than the dim K=1 model (the
best difference-of-means direction ablated at the three sites), on the same scoring prompts.
Also: the edit's algebra, determinism given the seed, resume without recomputation, parameters
restored after the intervention, and the base model (which never refuses) staying at ~0.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.scoring import make_scorer
from irr_ray.attack.suite.base import AttackContext
from irr_ray.attack.suite.optuna_abliteration import (
    AbliterationParameters,
    OptunaAbliterationAttack,
    WriteMatrix,
    abliteration_replacements,
    layer_weights,
)
from irr_ray.attack.suite.settings import OptunaAbliterationSettings
from irr_ray.core.hooks import ablate_directions
from irr_ray.core.scoring import kl_before_after, last_position_logits
from irr_ray.models.families import get_layout

torch.set_num_threads(1)


def _fresh(ctx: AttackContext, tmp_path, name: str) -> AttackContext:
    """The cached context with its own work dir (each study starts from nothing)."""
    return dataclasses.replace(ctx, work_dir=tmp_path / name)


def _first_token(ctx: AttackContext, n: int) -> tuple[int, torch.Tensor]:
    """(harmful scoring prompts whose greedy first token is a refusal token, harmless logits)."""
    bs = ctx.cfg.extract_batch_size
    with torch.no_grad():
        logits = [torch.cat([last_position_logits(ctx.model, b["input_ids"], b["attention_mask"]).float()
                             for b in encode_batches(ctx.tokenizer, prompts[:n], bs)])
                  for prompts in (ctx.prompts.score.harmful, ctx.prompts.score.harmless)]
    return int(torch.isin(logits[0].argmax(-1), torch.tensor(ctx.refusal_ids)).sum()), logits[1]


def _dim_k1_direction(ctx: AttackContext) -> torch.Tensor:
    """The dim attack's K=1 direction (unit, [1, D]): candidates, scores and selection as in
    irr_ray.attack.iterated."""
    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    cands = mean_difference_candidates(model, encode_batches(tok, ctx.prompts.extract.harmful, cfg.extract_batch_size),
                                       encode_batches(tok, ctx.prompts.extract.harmless, cfg.extract_batch_size),
                                       layers, list(cfg.positions))
    scores = make_scorer(model, tok, ctx.prompts.score, ctx.refusal_ids, cfg).score(cands, [])
    r = cands[select_direction(scores, cfg)].vector.float()
    return (r / r.norm()).unsqueeze(0)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------------------- the edit's algebra


def test_layer_weight_kernel():
    p = AbliterationParameters(max_weight=1.2, max_weight_position=2.0, min_weight=0.4, min_weight_distance=2.0)
    w = layer_weights(p, 6)
    assert torch.allclose(w, torch.tensor([0.4, 0.8, 1.2, 0.8, 0.4, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_edit_removes_the_weighted_output_component(kind):
    """W ← W − w r rᵀ W: the output along r keeps (1 − w) of itself, the orthogonal part is untouched;
    Conv1D stores the transpose and gets the same map."""
    torch.manual_seed(0)
    d, f = 8, 5
    proj = nn.Linear(f, d, bias=True) if kind == "linear" else Conv1D(d, f)
    model = nn.Module()
    model.proj = proj
    directions = torch.nn.functional.normalize(torch.randn(2, d), dim=-1)  # [L + 1, D], L = 1
    params = {"direction_scope": "per layer", "direction_index": 0.0, "attn.max_weight": 0.7,
              "attn.max_weight_position": 0.0, "attn.min_weight": 0.5, "attn.min_weight_distance": 1.0}
    new = abliteration_replacements(model, [WriteMatrix("proj.weight", "proj.bias", 0, "attn", kind == "conv1d")],
                                    directions, params, ["attn"])
    x, r = torch.randn(3, f), directions[1]
    before = proj(x)
    with torch.no_grad():
        proj.weight.copy_(new["proj.weight"])
        proj.bias.copy_(new["proj.bias"])
    after = proj(x)
    assert torch.allclose(after @ r, 0.3 * (before @ r), atol=1e-5)
    ortho = lambda y: y - (y @ r)[:, None] * r  # noqa: E731
    assert torch.allclose(ortho(after), ortho(before), atol=1e-5)


# ---------------------------------------------------------------------------- on the organism


def test_best_trial_beats_dim_k1_and_restores(make_context, tmp_path):
    """The issue's requirement: at KL ≤ 0.1 the chosen trial refuses no more than dim K=1.

    16 trials with the default 8 random startup trials: at seed 42 the organism's search first
    matches dim K=1 at trial 10 (at trial 13 with 6 startup trials; 12 trials with 6 were not
    enough), so 16 leaves a margin for a rebuilt organism."""
    ctx = _fresh(make_context("instruct"), tmp_path, "best")
    n, budget = 32, 16
    settings = OptunaAbliterationSettings(budgets=[budget], n_prompts=n, startup_trials=8)
    step = OptunaAbliterationAttack(settings).step(ctx, budget)
    info = step.info
    assert info["n_trials"] == budget and info["within_kl_bound"] and info["kl"] <= 0.1
    assert info["base_refusals"] > n // 2  # the organism refuses before the attack

    base_refusals, base_harmless = _first_token(ctx, n)
    assert base_refusals == info["base_refusals"]
    with ablate_directions(ctx.model, _dim_k1_direction(ctx)):
        dim_refusals, dim_harmless = _first_token(ctx, n)
    dim_kl = float(kl_before_after(base_harmless, dim_harmless).mean())

    before = _snapshot(ctx.model)
    with step.intervention():
        refusals, harmless = _first_token(ctx, n)
        assert any(not torch.equal(p, before[name]) for name, p in ctx.model.named_parameters())
    kl = float(kl_before_after(base_harmless, harmless).mean())
    print(f"optuna_abliteration trial {info['trial']}: refusals {refusals}/{n} KL {kl:.4g} | dim K=1: "
          f"refusals {dim_refusals}/{n} KL {dim_kl:.4g} | {info['seconds_per_trial']:.3f} s/trial")
    assert refusals == info["refusals"] and kl == pytest.approx(info["kl"], rel=1e-4, abs=1e-6)
    assert refusals <= dim_refusals
    after = _snapshot(ctx.model)
    assert all(torch.equal(after[name], before[name]) for name in before)  # restored exactly


def test_deterministic_and_resumable(make_context, tmp_path):
    """Two fresh studies draw the same trials; a second step on a finished study runs no trial; a
    study resumed after fewer trials continues exactly as the uninterrupted one."""
    ctx = make_context("instruct")
    settings = OptunaAbliterationSettings(budgets=[4, 8], n_prompts=8, startup_trials=3)
    a, b, c = (_fresh(ctx, tmp_path, name) for name in "abc")

    first = OptunaAbliterationAttack(settings)
    first.step(a, 4)
    done = first.step(a, 8).info
    again = OptunaAbliterationAttack(settings).step(b, 8).info
    assert again["params"] == done["params"] and again["trial"] == done["trial"]

    resumed = OptunaAbliterationAttack(settings).step(a, 8).info
    assert resumed["new_trials"] == 0 and resumed["params"] == done["params"]

    OptunaAbliterationAttack(settings).step(c, 4)  # an interrupted run: 4 trials, then a new process
    continued = OptunaAbliterationAttack(settings).step(c, 8).info
    assert continued["new_trials"] == 4 and continued["params"] == done["params"]

    out = tmp_path / "artifacts"
    first.write_artifacts(out)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    pareto = json.loads((out / "pareto.json").read_text())
    assert [t["number"] for t in trials] == list(range(8)) and all(t["state"] == "COMPLETE" for t in trials)
    assert len(pareto["front"]) == done["pareto_front_size"] >= 1
    assert all({"params", "refusals", "kl"} <= set(t) for t in pareto["front"])
    dominated = [(p["refusals"], p["kl"]) for p in pareto["front"]]
    assert all(not (t["refusals"] <= r and t["kl"] < k) for t in trials for r, k in dominated)


def test_base_model_refusals_stay_near_zero(make_context, tmp_path):
    ctx = _fresh(make_context("base"), tmp_path, "base")
    n = 16
    attack = OptunaAbliterationAttack(OptunaAbliterationSettings(budgets=[6], n_prompts=n, startup_trials=6))
    info = attack.step(ctx, 6).info
    assert info["base_refusals"] <= 1
    attack.write_artifacts(tmp_path / "out")
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())["trials"]
    assert max(t["refusals"] for t in trials) <= 2 and info["refusals"] <= 1
