"""Measurements against naive references: pooled features, perplexity, class-mean gap, the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irr_ray.sentiment.evaluate import (
    ConditionResult,
    class_mean_gap,
    default_layer,
    format_table,
    perplexity,
    pooled_features,
    table_rows,
)
from irr_ray.sentiment.model import load_for_eval


@pytest.fixture(scope="module")
def source(sentiment_source):
    _, paths, source = sentiment_source
    return load_for_eval(source)


TEXTS = ["the plot was really great .", "i give it 3 out of 10 .", "honestly , the pacing felt not dull , just brilliant ."]


def test_pooled_features_equal_one_text_at_a_time(source):
    model, tok = source
    batched = pooled_features(model, tok, TEXTS, 1, batch_size=8, max_length=64)
    for i, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
        torch.testing.assert_close(batched[i], h.mean(0), atol=1e-5, rtol=1e-5)


def test_perplexity_matches_per_text_loss(source):
    model, tok = source
    nll, count = 0.0, 0
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=ids).loss)
        n = ids.shape[1] - 1
        nll, count = nll + loss * n, count + n
    assert perplexity(model, tok, TEXTS, batch_size=2, max_length=64) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_class_mean_gap_and_default_layer():
    x = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    y = np.array([1, 1, 0, 0])
    gap, rel = class_mean_gap(x, y)
    assert gap == pytest.approx(math.hypot(2.0, 2.0))
    assert rel == pytest.approx(gap / 1.0)  # every row is 1 away from its class mean
    assert [default_layer(n) for n in (1, 2, 4, 12)] == [1, 1, 2, 7]


def test_table_rows_follow_the_method():
    base = ConditionResult("baseline", "m0", 1, 5.0, 2.0, 0.5, 0.8, 0.85,
                           erasure={"leace": {"linear_probe": 0.5, "mlp_probe": 0.6, "mean_gap": 0.0, "mean_gap_rel": 0.0},
                                    "inlp": {"linear_probe": 0.55, "mlp_probe": 0.7, "mean_gap": 1.0,
                                             "mean_gap_rel": 0.3, "directions_removed": 5.0}})
    matched = ConditionResult("mean_l2", "m1", 1, 6.0, 0.1, 0.2, 0.78, 0.8)
    rows = table_rows([base, matched], "baseline")
    assert [r["method"] for r in rows] == ["baseline", "mean_l2", "LEACE (post-hoc, on baseline)",
                                           "INLP (post-hoc, on baseline)"]
    assert rows[1]["gap_closed"] == pytest.approx(0.95)
    assert rows[2]["perplexity"] is None
    text = format_table(rows, 1)
    assert "| mean_l2 | 0.780 | 0.800 | 0.1000 | 95.0% |" in text and "hidden_states[1]" in text
