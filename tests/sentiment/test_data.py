"""The local review set: deterministic, cached, balanced, shared vocabulary, validated."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from irr_ray.config import build_config
from irr_ray.errors import ConfigError, DataValidationError
from irr_ray.sentiment.config import SentimentDataConfig
from irr_ray.sentiment.data import (
    NEGATIVE,
    POSITIVE,
    build_sentiment_data,
    generate_local_reviews,
    read_split,
    validate_split,
)


def test_generation_is_deterministic_unique_and_balanced():
    cfg = SentimentDataConfig(n_reviews=400, seed=3)
    a, b = generate_local_reviews(cfg), generate_local_reviews(cfg)
    pd.testing.assert_frame_equal(a, b)
    assert a["text"].is_unique
    assert a["label"].value_counts().to_dict() == {0: 200, 1: 200}
    assert not a.equals(generate_local_reviews(cfg.model_copy(update={"seed": 4})))


def test_sentiment_words_occur_in_both_classes():
    """Shared vocabulary: every sentiment adjective appears in positive and in negative reviews, so
    the label is a property of phrases in context (negation, majority), not of single words."""
    df = generate_local_reviews(SentimentDataConfig(n_reviews=2000))
    words = {label: set(" ".join(df.loc[df["label"] == label, "text"]).split()) for label in (0, 1)}
    for adjective in POSITIVE + NEGATIVE:
        assert adjective in words[0] and adjective in words[1], adjective
    negated = df["text"].str.contains(r"\b(?:not|hardly|never|far from)\b")
    assert 0.2 < negated.mean() < 0.9


def test_build_is_cached_and_split_is_stratified(tmp_path):
    cfg = SentimentDataConfig(n_reviews=300, holdout_fraction=0.4)
    first = build_sentiment_data(cfg, tmp_path / "data")
    train, hold = read_split(tmp_path / "data", "train"), read_split(tmp_path / "data", "holdout")
    assert first["counts"] == {"train": {"0": 90, "1": 90}, "holdout": {"0": 60, "1": 60}}
    assert not set(train["text"]) & set(hold["text"])
    stamp = (tmp_path / "data" / "train.parquet").stat().st_mtime_ns
    assert build_sentiment_data(cfg, tmp_path / "data") == first  # cache hit: nothing rewritten
    assert (tmp_path / "data" / "train.parquet").stat().st_mtime_ns == stamp
    # a changed config rebuilds; a tampered file is detected and rebuilt
    (tmp_path / "data" / "train.parquet").write_bytes(b"corrupt")
    assert build_sentiment_data(cfg, tmp_path / "data")["files"] == first["files"]


def test_bad_rows_and_configs_are_named():
    with pytest.raises(DataValidationError, match="row 1 has label 2"):
        validate_split(pd.DataFrame({"text": ["good", "bad"], "label": [1, 2]}), "x.parquet")
    with pytest.raises(DataValidationError, match="missing column"):
        validate_split(pd.DataFrame({"review": ["good"], "label": [1]}), "x.parquet")
    with pytest.raises(DataValidationError, match="row 0 has an empty"):
        validate_split(pd.DataFrame({"text": [" ", "bad"], "label": [1, 0]}), "x.parquet")
    with pytest.raises(ConfigError, match=re.escape("data.yaml: `<root>`: Value error, data.aspect_sentences")):
        build_config(SentimentDataConfig, {"aspect_sentences": [2]}, "data.yaml")
