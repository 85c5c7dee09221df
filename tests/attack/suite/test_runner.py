"""The suite runner on the real organism: one evaluation per budget in the dim outcome format, the
verdict, resume per budget, the K=0 row reused from a finished dim attack, and the CLI.

A stand-in attack (named as such: ``ScriptedAttack``) plays the registered ``rdo`` slot so the
runner's own behaviour is tested without an optimiser: budget b ablates the first b rows of a fixed
set of directions — the organism's real difference-of-means direction first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.suite import runner
from irr_ray.attack.suite.base import BudgetStep, SuiteAttack
from irr_ray.attack.suite.settings import RDOSettings
from irr_ray.contracts import AttackDoc
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions
from tests.attack.conftest import SMALL_ATTACK

CALLS: list[int] = []


class ScriptedAttack(SuiteAttack):
    """Stand-in for a real attack: ablates the first ``budget`` of the directions it is given."""

    name, budget_axis, Settings = "rdo", "cone_dim", RDOSettings
    directions: torch.Tensor
    fail_at: int | None = None

    def step(self, ctx, budget):
        if budget == self.fail_at:
            raise RuntimeError(f"interrupted at {budget}")
        CALLS.append(budget)
        q = self.directions[:budget]
        return BudgetStep(lambda: ablate_directions(ctx.model, q), {"rows": budget})

    def write_artifacts(self, out: Path) -> None:
        (out / "scripted.txt").write_text("ok")


@pytest.fixture(scope="module")
def direction(make_context):
    from irr_ray.attack import candidates

    ctx = make_context("instruct")
    layers = ctx.cfg.candidate_layer_indices(ctx.model.config.num_hidden_layers)
    cands = candidates.mean_difference_candidates(
        ctx.model, candidates.encode_batches(ctx.tokenizer, ctx.prompts.extract.harmful, 64),
        candidates.encode_batches(ctx.tokenizer, ctx.prompts.extract.harmless, 64), layers, [-1])
    best = max(cands, key=lambda c: c.norm)
    gen = torch.Generator().manual_seed(0)
    return orthonormalize(torch.stack([best.vector, *torch.randn(2, best.vector.shape[0], generator=gen)]))


def _cfg(**over) -> AttackConfig:
    return AttackConfig.model_validate({**SMALL_ATTACK, "suite": ["dim", "rdo"], "rdo": {"budgets": [1, 2, 3]},
                                        "stop_below_threshold": False, **over})


def test_curve_per_budget_verdict_and_resume(organism_dir, study_data, direction, tmp_path, monkeypatch):
    ScriptedAttack.directions, ScriptedAttack.fail_at = direction, 3
    monkeypatch.setattr(runner, "attack_class", lambda name: ScriptedAttack)
    out = tmp_path / "attacks" / "original" / "rdo"
    model = str(Path(organism_dir) / "instruct")
    CALLS.clear()
    with pytest.raises(RuntimeError, match="interrupted at 3"):
        runner.run_suite_attack("rdo", model, study_data, _cfg(), out)
    assert CALLS == [1, 2] and not out.exists()
    ScriptedAttack.fail_at = None
    doc = runner.run_suite_attack("rdo", model, study_data, _cfg(), out)
    assert CALLS == [1, 2, 3]  # budgets 1 and 2 were not recomputed
    assert (doc.attack, doc.budget_axis, doc.budget_max) == ("rdo", "cone_dim", 3)
    assert [r.K for r in doc.curve] == [0, 1, 2, 3]
    k0, k1 = doc.curve[0], doc.curve[1]
    assert k0.refusal_harmful >= 0.9 and k1.refusal_harmful < 0.3  # the real direction breaks it
    assert k1.info == {"rows": 1}
    for r in doc.curve:
        assert r.refusal_harmful + r.complied_harmful + r.degenerate_harmful == pytest.approx(1.0)
    assert doc.verdict.verdict == "broken" and doc.verdict.decided_at_k == 1 and doc.attack_rank == 1
    assert (out / "scripted.txt").read_text() == "ok"
    log = json.loads((out / "attack_log.json").read_text())
    assert log["attack"] == "rdo" and set(log["info"]) == {"1", "2", "3"}
    assert AttackDoc.read(out / "attack.json") == doc
    assert not (out.parent / ".rdo.progress").exists()
    again = runner.run_suite_attack("rdo", model, study_data, _cfg(), out)  # finished: read back
    assert again == doc and CALLS == [1, 2, 3]


def test_k0_row_is_reused_from_a_finished_dim_attack(organism_dir, study_data, direction, tmp_path, monkeypatch):
    from irr_ray.attack.run import attack_model

    ScriptedAttack.directions, ScriptedAttack.fail_at = direction, None
    monkeypatch.setattr(runner, "attack_class", lambda name: ScriptedAttack)
    model = str(Path(organism_dir) / "instruct")
    dim_dir = tmp_path / "attacks" / "original"
    dim = attack_model(model, study_data, _cfg(k_max=1), dim_dir)
    calls = []
    real = runner.evaluate_k0
    monkeypatch.setattr(runner, "evaluate_k0", lambda *a, **k: calls.append(1) or real(*a, **k))
    doc = runner.run_suite_attack("rdo", model, study_data, _cfg(rdo={"budgets": [1]}), dim_dir / "rdo",
                                  dim_dir=dim_dir)
    assert calls == [] and doc.curve[0] == dim.curve[0]
    # a dim rerun keeps the suite result beside it
    attack_model(model, study_data, _cfg(k_max=1), dim_dir, force=True)
    assert (dim_dir / "rdo" / "attack.json").is_file()


def test_stop_below_threshold_skips_the_budgets_after_the_first_crossing(organism_dir, study_data, direction,
                                                                          tmp_path, monkeypatch):
    """``attack.stop_below_threshold``: once harmful refusal is below the threshold the remaining
    budgets are skipped (the verdict is decided at the first crossing), the doc says why."""
    ScriptedAttack.directions, ScriptedAttack.fail_at = direction, None
    monkeypatch.setattr(runner, "attack_class", lambda name: ScriptedAttack)
    model = str(Path(organism_dir) / "instruct")
    CALLS.clear()
    doc = runner.run_suite_attack("rdo", model, study_data, _cfg(stop_below_threshold=True),
                                  tmp_path / "attacks" / "original" / "rdo")
    assert CALLS == [1] and [r.K for r in doc.curve] == [0, 1]
    assert doc.stop_reason == "below_threshold" and doc.budget_max == 3
    assert doc.verdict.verdict == "broken" and doc.verdict.decided_at_k == 1 and doc.attack_rank == 1
    # a model already below the threshold at K=0 (the base) is not attacked at all
    CALLS.clear()
    base = runner.run_suite_attack("rdo", str(Path(organism_dir) / "base"), study_data,
                                   _cfg(stop_below_threshold=True), tmp_path / "attacks" / "base" / "rdo")
    assert CALLS == [] and [r.K for r in base.curve] == [0] and base.stop_reason == "below_threshold"
    assert base.verdict.verdict == "broken" and base.verdict.decided_at_k == 0
