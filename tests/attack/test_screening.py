"""Attribution screening of the attack's candidates (:mod:`irr_ray.core.attribution`,
:mod:`irr_ray.attack.scoring.screened`): the first-order estimate is the derivative it claims to
be, the write-site path ends at the exact ablation, widening to every candidate reproduces exact
scoring, and exact scoring stays the default. Tiny random models, no mocks, one thread."""

from __future__ import annotations

import math

import pytest
import torch

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.scoring import FastScorer, ScreenedScorer, make_scorer
from irr_ray.core.attribution import ablation_effect, first_order_scores
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions, at_write_sites
from irr_ray.core.scoring import last_position_logits
from irr_ray.models.families import get_layout
from tests.core.tiny_models import left_padded_batch, tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logit_score(batch):
    """A smooth scalar of the last-position logits (stands in for the refusal score)."""

    def score(model, b=batch):
        logits = last_position_logits(model, b["input_ids"], b["attention_mask"]).double()
        return torch.log_softmax(logits, -1)[:, 5].mean()

    return score


def test_ablation_effect_is_the_loop_it_vectorises() -> None:
    g = torch.Generator().manual_seed(0)
    acts, grads = torch.randn(3, 2, 4, 8, generator=g), torch.randn(3, 2, 4, 8, generator=g)
    units = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    units[2] = 0  # a candidate inside span(Q): no effect
    loop = torch.stack([-((grads @ u) * (acts @ u)).sum() for u in units]).double()
    torch.testing.assert_close(ablation_effect(acts, grads, units), loop, rtol=1e-5, atol=1e-6)
    assert float(ablation_effect(acts, grads, units)[2]) == 0.0
    with pytest.raises(ValueError, match="units must be"):
        ablation_effect(acts, grads, units[:, :4])


@pytest.mark.parametrize("family", ["LlamaConfig", "Gemma2Config"])
def test_write_sites_ablation_is_the_three_site_ablation(family: str) -> None:
    """Projecting x_0 and every write equals the three-site ablation (so the estimate's path ends
    at the exact intervention), also for a sandwich-norm family."""
    model, batch = tiny_model(family), left_padded_batch()
    u = torch.nn.functional.normalize(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    args = (batch["input_ids"], batch["attention_mask"])
    with torch.no_grad(), ablate_directions(model, u):
        exact = last_position_logits(model, *args)
    with torch.no_grad(), at_write_sites(model, lambda x: x - (x @ u.T) @ u):
        writes = last_position_logits(model, *args)
    torch.testing.assert_close(writes, exact, rtol=1e-5, atol=1e-5)


def test_estimate_is_the_derivative_of_the_ablation_path() -> None:
    """Central differences along the write-site path a ← a − ε(a·u)u match the estimate Δ̂ (float64,
    ε = 1e-3), under an existing ablation Q; the full ablation (ε = 1) is only roughly first order:
    its sign agrees on most random directions, and the correlation is reported, not asserted high."""
    model = tiny_model("LlamaConfig").double()
    try:
        batch = left_padded_batch()
        gen = torch.Generator().manual_seed(4)
        q = torch.nn.functional.normalize(torch.randn(1, 32, generator=gen, dtype=torch.float64), dim=-1)
        raw = torch.randn(12, 32, generator=gen, dtype=torch.float64)
        units = torch.nn.functional.normalize(raw - (raw @ q.T) @ q, dim=-1)
        score = _logit_score(batch)
        with ablate_directions(model, q):
            s0, delta = first_order_scores(model, [batch], lambda m, b: score(m), units)
        eps = 1e-3  # central differences: O(ε²); the norms compute in float32 even in a float64 model
        for c in range(3):
            u = units[c:c + 1]
            side = []
            for sign in (1, -1):
                with torch.no_grad(), ablate_directions(model, q), \
                        at_write_sites(model, lambda x, e=sign * eps, u=u: x - e * (x @ u.T) @ u):
                    side.append(float(score(model)))
            assert (side[0] - side[1]) / (2 * eps) == pytest.approx(float(delta[c]), rel=1e-3, abs=1e-7)
        exact = []
        for c in range(units.shape[0]):
            with torch.no_grad(), ablate_directions(model, torch.cat([q, units[c:c + 1]])):
                exact.append(float(score(model)) - s0)
        exact_t = torch.tensor(exact, dtype=torch.float64)
        agree = float((torch.sign(exact_t) == torch.sign(delta)).double().mean())
        assert agree >= 0.5, f"sign agreement of full ablations {agree:.2f}"
    finally:
        model.float()


@pytest.fixture(scope="module")
def case():
    """A random 4-block Llama with the organism's tokenizer and prompts (the bench's quick model)."""
    from irr_ray.bench.screening import random_case

    built = random_case("llama", 1, quick=True)
    assert get_layout(built.model).num_layers == 4
    return built


def test_calibration_scale_and_margin() -> None:
    from irr_ray.attack.scoring.screened import calibrate

    dh = torch.tensor([-0.4, -0.2, -0.1], dtype=torch.float64)
    assert calibrate(dh, 0.5 * dh, 2.0) == pytest.approx((0.5, 0.0))
    scale, margin = calibrate(dh, 0.5 * dh + torch.tensor([0.0, 0.01, -0.01], dtype=torch.float64), 2.0)
    assert scale == pytest.approx(0.5, abs=0.05) and margin >= 2 * 0.009
    assert all(math.isnan(v) for v in calibrate(torch.zeros(3), torch.ones(3), 2.0))


def _candidates(case, chosen):
    cfg = case.cfg
    layers = cfg.candidate_layer_indices(get_layout(case.model).num_layers)
    harmful = encode_batches(case.tokenizer, case.extract.harmful, cfg.extract_batch_size)
    harmless = encode_batches(case.tokenizer, case.extract.harmless, cfg.extract_batch_size)
    q = orthonormalize(torch.stack(chosen)) if chosen else None
    return mean_difference_candidates(case.model, harmful, harmless, layers, cfg.positions, q)


@pytest.mark.parametrize("screen_fallback", [False, True])
def test_screened_widened_to_every_candidate_equals_exact(case, screen_fallback: bool) -> None:
    """A huge safety factor never certifies a choice, so the screen widens 2 → 4 → … → all: the
    scores and the choice are the fast scorer's, over two iterations."""
    cfg = case.cfg.model_copy(update={"scoring": "screened", "screen_top": 2, "screen_safety": 1e9,
                                      "screen_fallback": screen_fallback})
    _, ids = refusal_token_ids(case.model, case.tokenizer, None)
    exact = FastScorer.from_config(case.model, case.tokenizer, case.score, ids, case.cfg)
    screened = make_scorer(case.model, case.tokenizer, case.score, ids, cfg)
    assert isinstance(screened, ScreenedScorer)
    chosen: list[torch.Tensor] = []
    for _ in range(2):
        candidates = _candidates(case, chosen)
        a, b = exact.score(candidates, chosen), screened.score(candidates, chosen)
        assert screened.last.all_scored and screened.last.exact_refusal == len(candidates)
        assert screened.last.rounds > 1 and not screened.last.certain
        for x, y in zip(a, b):
            assert y.refusal_score == pytest.approx(x.refusal_score, abs=1e-9)
            if not (math.isnan(x.kl) or math.isnan(y.kl)):
                assert y.kl == pytest.approx(x.kl, abs=1e-9)
        pick = select_direction(a, case.cfg)
        assert select_direction(b, cfg) == pick
        chosen.append(candidates[pick].vector)


def test_screened_certain_choice_scores_fewer_and_matches(case) -> None:
    """With a survivor among the screen's first candidates (filters opened up: a random model never
    reaches induce ≥ 0) and the estimate well calibrated, the screen stops early with the exact choice,
    and unscored candidates are NaN; a budget caps the exact passes."""
    base = case.cfg.model_copy(update={"induce_threshold": -1e9, "kl_threshold": 1e9})
    _, ids = refusal_token_ids(case.model, case.tokenizer, None)
    candidates = _candidates(case, [])
    exact = FastScorer.from_config(case.model, case.tokenizer, case.score, ids, base).score(candidates, [])
    certified = 0
    for safety in (1.0, 2.0):
        cfg = base.model_copy(update={"scoring": "screened", "screen_top": 2, "screen_safety": safety})
        scorer = ScreenedScorer.from_config(case.model, case.tokenizer, case.score, ids, cfg)
        scores = scorer.score(candidates, [])
        stats = scorer.last
        assert stats.exact_refusal == sum(not math.isnan(s.refusal_score) for s in scores)
        if stats.certain:
            certified += 1
            assert stats.exact_refusal < len(candidates)
            assert select_direction(scores, cfg) == select_direction(exact, base)
    assert certified  # measured: safety 1 certifies after the first 2 of 15 (a weak, 2-point calibration)
    capped = base.model_copy(update={"scoring": "screened", "screen_top": 2, "screen_budget": 2, "screen_safety": 1e9})
    scorer = ScreenedScorer.from_config(case.model, case.tokenizer, case.score, ids, capped)
    scorer.score(candidates, [])
    assert scorer.last.budget_hit and scorer.last.exact_refusal == 2


def test_exact_scoring_is_the_default_and_screening_is_validated(case) -> None:
    cfg = AttackConfig()
    assert cfg.scoring == "exact" and cfg.screen_budget is None and not cfg.screen_fallback
    with pytest.raises(ValueError, match="scoring=screened needs implementation=fast"):
        AttackConfig(scoring="screened", implementation="reference")
    with pytest.raises(ValueError, match="screen_budget"):
        AttackConfig(scoring="screened", screen_top=8, screen_budget=4)
    with pytest.raises(ValueError, match="scoring"):
        AttackConfig(scoring="approximate")
    _, ids = refusal_token_ids(case.model, case.tokenizer, None)
    scorer = make_scorer(case.model, case.tokenizer, case.score, ids, case.cfg)
    assert type(scorer) is FastScorer
