"""The ``rdo`` attack (refusal direction optimisation and concept cones, Wollschläger et al. 2025) on
the real organism: a trained direction removes at least as much refusal as the best
difference-of-means direction at no more KL, runs are deterministic and resumable, cone bases are
orthonormal and extend the previous cone, and a base model (which never refuses) is left alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.scoring import make_scorer
from irr_ray.attack.scoring.reference import harmless_kl, refusal_score
from irr_ray.attack.suite import attack_class
from irr_ray.attack.suite.base import AttackContext
from irr_ray.attack.suite.rdo import RDOAttack, row_interventions
from irr_ray.attack.suite.settings import RDOSettings
from irr_ray.core.directions import load_directions
from irr_ray.core.hooks import ablate_directions, add_activation
from irr_ray.core.scoring import last_position_logits
from irr_ray.models.families import get_layout

torch.set_num_threads(1)

# small but real: the organism's refusal is one easy direction, so a few steps show the behaviour
SMALL = {"batch_size": 8, "cone_samples": 4}
# KL tolerance of "equal KL" (nats, last-position next-token distribution on harmless prompts):
# both directions keep KL two orders of magnitude below the attack's 0.1 filter
KL_TOL = 0.01
REFUSAL_TOL = 0.1  # refusal log-odds


def _ctx(make_context, role: str, work: Path) -> AttackContext:
    return dataclasses.replace(make_context(role), work_dir=work)


def _batches(ctx: AttackContext):
    cfg = ctx.cfg
    enc = [encode_batches(ctx.tokenizer, prompts, cfg.extract_batch_size, ctx.device, cfg.max_prompt_tokens)
           for prompts in (ctx.prompts.score.harmful, ctx.prompts.score.harmless)]
    return enc[0], enc[1]


@pytest.fixture(scope="module")
def cone_run(make_context, tmp_path_factory):
    """A two-budget run (cones 1 and 2) with a few steps: (ctx, attack, steps)."""
    ctx = _ctx(make_context, "instruct", tmp_path_factory.mktemp("rdo_cone"))
    attack = RDOAttack(RDOSettings(budgets=[1, 2], steps=3, **SMALL))
    steps = [attack.step(ctx, b) for b in attack.budgets()]
    return ctx, attack, steps


def test_registered():
    assert attack_class("rdo") is RDOAttack
    assert RDOAttack.budget_axis == "cone_dim" and RDOAttack.Settings is RDOSettings


def test_row_interventions_match_core_hooks_and_carry_gradients(make_context):
    """The differentiable per-row hooks equal the core three-site ablation / activation addition
    (two directions, one per group of rows, in one forward), and gradients reach the directions."""
    ctx = make_context("instruct")
    model, layout = ctx.model, get_layout(ctx.model)
    batch = _batches(ctx)[0][0]
    ids, mask = batch["input_ids"][:4], batch["attention_mask"][:4]
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(2, model.config.hidden_size, generator=g)
    dirs = (dirs / dirs.norm(dim=1, keepdim=True)).requires_grad_(True)
    layer = layout.num_layers // 2
    with row_interventions(layout, ablate=dirs.repeat_interleave(4, 0)):
        ablated = last_position_logits(model, ids.repeat(2, 1), mask.repeat(2, 1))
    with row_interventions(layout, add=3.0 * dirs.repeat_interleave(4, 0), layer=layer):
        added = last_position_logits(model, ids.repeat(2, 1), mask.repeat(2, 1))
    (ablated.logsumexp(-1).sum() + added.logsumexp(-1).sum()).backward()
    assert dirs.grad is not None and bool((dirs.grad.norm(dim=1) > 0).all())
    with torch.no_grad():
        for i in range(2):
            with ablate_directions(model, dirs[i:i + 1].detach()):
                ref = last_position_logits(model, ids, mask)
            assert torch.allclose(ablated[4 * i:4 * i + 4], ref, atol=1e-4)
            with add_activation(model, layer, dirs[i].detach(), coeff=3.0):
                ref = last_position_logits(model, ids, mask)
            assert torch.allclose(added[4 * i:4 * i + 4], ref, atol=1e-4)


def test_single_direction_beats_difference_of_means_at_equal_kl(make_context, tmp_path):
    """rdo's K=1 direction: refusal log-odds on the harmful SCORE prompts (train split) with it
    ablated ≤ the best difference-of-means direction's (+ REFUSAL_TOL), KL on the harmless ones ≤
    DIM's + KL_TOL. On organism-v4 seed 0 the trained direction alone does not (−8.06 against
    −11.30: the first-token surrogate saturates), so this holds through ``select = "score"``, which
    keeps the stronger of the trained direction and its difference-of-means start; the printed
    ``selected`` says which."""
    ctx = _ctx(make_context, "instruct", tmp_path)
    model, cfg = ctx.model, ctx.cfg
    n_layers = get_layout(model).num_layers
    extract = [encode_batches(ctx.tokenizer, p, cfg.extract_batch_size, ctx.device, cfg.max_prompt_tokens)
               for p in (ctx.prompts.extract.harmful, ctx.prompts.extract.harmless)]
    candidates = mean_difference_candidates(model, *extract, cfg.candidate_layer_indices(n_layers), cfg.positions)
    scores = make_scorer(model, ctx.tokenizer, ctx.prompts.score, ctx.refusal_ids, cfg).score(candidates, [])
    dim = candidates[select_direction(scores, cfg)].vector
    dim = (dim / dim.norm())[None]

    attack = RDOAttack(RDOSettings(budgets=[1], steps=30))
    step = attack.step(ctx, 1)
    rdo = attack.basis(1)
    harmful, harmless = _batches(ctx)
    numbers = {name: (refusal_score(model, harmful, ctx.refusal_ids, d), harmless_kl(model, harmless, d))
               for name, d in (("dim", dim), ("rdo", rdo))}
    unattacked = refusal_score(model, harmful, ctx.refusal_ids)
    print(f"refusal log-odds / KL on the score prompts: unattacked {unattacked:.3f}; "
          f"dim {numbers['dim'][0]:.3f} / {numbers['dim'][1]:.5f}; rdo {numbers['rdo'][0]:.3f} / "
          f"{numbers['rdo'][1]:.5f}; info {step.info}")
    assert step.info["layer"] == scores[select_direction(scores, cfg)].layer  # added at the DIM layer
    assert numbers["rdo"][0] <= numbers["dim"][0] + REFUSAL_TOL
    assert numbers["rdo"][1] <= numbers["dim"][1] + KL_TOL
    assert numbers["rdo"][0] < unattacked - 1.0  # it removes refusal at all
    assert step.info["refusal_score"] == pytest.approx(numbers["rdo"][0])
    # the budget step's intervention is the three-site ablation of the direction
    with step.intervention():
        assert refusal_score(model, harmful, ctx.refusal_ids) == pytest.approx(numbers["rdo"][0])


def test_cone_basis_orthonormal_and_extends_previous(cone_run):
    ctx, attack, steps = cone_run
    b1, b2 = attack.basis(1), attack.basis(2)
    assert b1.shape == (1, ctx.model.config.hidden_size) and b2.shape == (2, ctx.model.config.hidden_size)
    assert torch.allclose(b2 @ b2.T, torch.eye(2), atol=1e-5)
    assert torch.allclose(b1.norm(), torch.tensor(1.0), atol=1e-5)
    assert float(b2[0] @ b1[0]) > 0.8  # cone 2 started from cone 1
    info = steps[1].info
    for key in ("refusal_score", "kl", "induce_score", "loss", "cone_refusal_max"):
        assert key in info
    assert info["cone_dim"] == 2 and info["steps_run"] <= 3


def test_deterministic_given_seed(cone_run, make_context, tmp_path):
    ctx, attack, _ = cone_run
    again = RDOAttack(RDOSettings(budgets=[1, 2], steps=3, **SMALL))
    again.step(_ctx(make_context, "instruct", tmp_path), 2)
    assert torch.equal(again.basis(1), attack.basis(1))
    assert torch.equal(again.basis(2), attack.basis(2))


def test_resume_reloads_without_optimising(cone_run, monkeypatch, tmp_path):
    ctx, attack, steps = cone_run

    def boom(*args, **kwargs):
        raise AssertionError("a resumed run must not optimise again")

    monkeypatch.setattr(RDOAttack, "_optimise", boom)
    monkeypatch.setattr(RDOAttack, "_setup", boom)
    resumed = RDOAttack(RDOSettings(budgets=[1, 2], steps=3, **SMALL))
    step = resumed.step(ctx, 2)
    assert torch.equal(resumed.basis(2), attack.basis(2)) and torch.equal(resumed.basis(1), attack.basis(1))
    assert step.info["resumed"] and step.info["refusal_score"] == steps[1].info["refusal_score"]
    # other settings are another optimisation
    with pytest.raises(AssertionError, match="must not optimise"):
        RDOAttack(RDOSettings(budgets=[1], steps=4, **SMALL)).step(ctx, 1)
    resumed.write_artifacts(tmp_path)
    saved, meta = load_directions(tmp_path / "rdo_basis.safetensors")
    assert torch.equal(saved, attack.basis(2)) and meta["cone_dim"] == "2"


def test_base_model_left_alone(make_context, tmp_path):
    """The base model never refuses: ablating its cones 1 and 2 keeps the first-token refusal
    probability low on harmful and harmless score prompts."""
    ctx = _ctx(make_context, "base", tmp_path)
    attack = RDOAttack(RDOSettings(budgets=[1, 2], steps=3, **SMALL))
    harmful, harmless = _batches(ctx)
    ids = torch.tensor(ctx.refusal_ids)

    def p_refusal() -> float:
        with torch.no_grad():
            probs = [last_position_logits(ctx.model, b["input_ids"], b["attention_mask"]).softmax(-1)[:, ids].sum(-1)
                     for b in (*harmful, *harmless)]
        return float(torch.cat(probs).mean())

    before = p_refusal()
    for budget in attack.budgets():
        step = attack.step(ctx, budget)
        with step.intervention():
            after = p_refusal()
        print(f"base model, cone {budget}: first-token refusal probability {before:.4f} -> {after:.4f}")
        assert after <= max(0.05, before + 0.02)
    assert not ctx.model.training and not any(p.requires_grad for p in ctx.model.parameters())
