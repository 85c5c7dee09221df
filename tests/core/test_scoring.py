"""Refusal scoring helpers (:mod:`irr_ray.core.scoring`) against their textbook definitions."""

from __future__ import annotations

import math

import pytest
import torch

from irr_ray.core.directions import orthonormalize
from irr_ray.core.scoring import complete_sets, kl_before_after, last_position_logits, refusal_log_odds

try:  # tests/ as a package
    from .tiny_models import left_padded_batch, tiny_model
except ImportError:  # rootdir-relative import (no __init__.py)
    from tiny_models import left_padded_batch, tiny_model


def test_refusal_log_odds_is_log_p_over_one_minus_p() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64) * 3
    ids = [3, 7, 11]
    p = torch.softmax(logits, -1)[:, ids].sum(-1)
    torch.testing.assert_close(refusal_log_odds(logits, ids), torch.log(p) - torch.log1p(-p))
    torch.testing.assert_close(refusal_log_odds(logits.float(), torch.tensor(ids)), torch.log(p) - torch.log1p(-p),
                               rtol=1e-5, atol=1e-5)  # float32 logits in, float64 out
    # exact where p_R ≈ 1 (the ε-form saturates there): 1 − p_R = e^{-200}·(V − 1)
    sure = torch.zeros(1, 50, dtype=torch.float64)
    sure[0, 3] = 200.0
    assert float(refusal_log_odds(sure, [3])) == pytest.approx(200.0 - math.log(49))


def test_kl_before_after_matches_the_definition() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 20, generator=g), torch.randn(3, 20, generator=g)
    pa, pb = torch.softmax(a.double(), -1), torch.softmax(b.double(), -1)
    torch.testing.assert_close(kl_before_after(a, b), (pa * (pa.log() - pb.log())).sum(-1))
    assert torch.equal(kl_before_after(a, a), torch.zeros(3, dtype=torch.float64))


def test_complete_sets_equal_orthonormalize_per_candidate() -> None:
    g = torch.Generator().manual_seed(2)
    chosen = torch.randn(2, 16, generator=g, dtype=torch.float64)
    q = orthonormalize(chosen)
    raw = torch.randn(5, 16, generator=g, dtype=torch.float64)
    raw[4] = 0.3 * chosen[0] - 2.0 * chosen[1]  # inside span(Q): no new direction
    sets = complete_sets(q, raw)
    assert sets.shape == (5, 3, 16)
    for c in range(4):
        torch.testing.assert_close(sets[c], orthonormalize(torch.cat([chosen, raw[c : c + 1]])))
    assert torch.equal(sets[4, 2], torch.zeros(16, dtype=torch.float64))
    torch.testing.assert_close(complete_sets(q[:0], raw[:4])[:, 0], raw[:4] / raw[:4].norm(dim=-1, keepdim=True))


def test_last_position_logits_with_and_without_logits_to_keep() -> None:
    model, batch = tiny_model("LlamaConfig"), left_padded_batch()
    with torch.no_grad():
        last = last_position_logits(model, batch["input_ids"], batch["attention_mask"])
        every = last_position_logits(model, batch["input_ids"], batch["attention_mask"], all_positions=True)
        alone = last_position_logits(model, batch["input_ids"][2:, -3:], batch["attention_mask"][2:, -3:])
    assert last.shape == (3, model.config.vocab_size)
    torch.testing.assert_close(last, every, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last[2:], alone, rtol=1e-4, atol=1e-5)  # left padding changes nothing
