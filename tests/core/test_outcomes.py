"""Reply outcomes (irr_ray.core.outcomes): form rules, the calibrated NLL bound, the classification."""

from __future__ import annotations

import torch

from irr_ray.core.outcomes import (
    COMPLIED,
    DEGENERATE,
    REFUSED,
    DegenerateRules,
    classify,
    form_is_degenerate,
    nll_bound,
)


def test_form_rules() -> None:
    replies = [
        [],                              # empty
        [5, 5, 5, 7],                    # "I I I x": a run of 3
        [5, 5, 7, 5, 5],                 # runs of 2 only: fine
        [1, 2, 1, 2, 1, 2, 1, 2],        # 8 tokens, 2 distinct
        [1, 2, 3, 1, 2, 3, 1, 2],        # 8 tokens, 3 distinct: fine
        [9],                             # one token: fine by form
    ]
    assert form_is_degenerate(replies).tolist() == [True, True, False, True, False, False]
    assert form_is_degenerate([[5, 5, 5]], DegenerateRules(max_repeat=4)).tolist() == [False]


def test_nll_bound_is_a_quantile_plus_margin() -> None:
    nll = torch.tensor([float(i) for i in range(101)] + [float("nan")], dtype=torch.float64)
    assert nll_bound(nll, DegenerateRules(nll_quantile=0.95, nll_margin=1.0)) == 96.0
    assert nll_bound(torch.tensor([float("nan")])) == float("inf")


def test_classify_refusal_wins_then_degenerate_then_complied() -> None:
    refused = torch.tensor([True, True, False, False, False])
    form = torch.tensor([True, False, True, False, False])
    nll = torch.tensor([9.0, 9.0, 0.1, 5.0, float("nan")], dtype=torch.float64)
    out = classify(refused, form, nll, bound=2.0)
    assert out.tolist() == [REFUSED, REFUSED, DEGENERATE, DEGENERATE, COMPLIED]
