"""Prompt dedup before balancing: repeats (also in case/whitespace variants) keep their first row,
prompts whose copies disagree on the gold label are dropped whole, and the counts say so."""

from __future__ import annotations

import pandas as pd

from irr_ray.data.ingest import read_source
from irr_ray.data.prepare import dedup_prompts, prepare_prompts, prompt_key
from irr_ray.data.split import stratified_split
from irr_ray.data.validate import validate_raw
from tests.data.conftest import REPEATS_DEDUP_COUNTS as EXPECTED
from tests.data.conftest import raw_row, repeats_frame


def test_prompt_key_normalises_whitespace_and_case():
    keys = prompt_key(pd.Series(["  A\tb\n\nC  ", "a b c", "A B C", "a  b c.", "Straße"]))
    assert keys.tolist() == ["a b c", "a b c", "a b c", "a b c.", "strasse"]


def test_dedup_keeps_first_copy_and_drops_conflicts():
    frame = repeats_frame().iloc[:-2].reset_index(drop=True)
    frame.insert(0, "row_id", range(len(frame)))
    kept, stats = dedup_prompts(frame)
    assert stats == EXPECTED
    assert kept["row_id"].tolist() == list(range(16))  # the first copy of each repeat is the one kept
    assert kept["prompt"].iloc[0] == "how do I hurt person 0"
    assert prompt_key(kept["prompt"]).is_unique


def test_prepare_dedups_before_balancing_and_counts(write_raw):
    frame = repeats_frame()
    table = read_source(str(write_raw(frame)))
    validate_raw(table, "drop")
    prompts, counts = prepare_prompts(table, seed=0, max_samples=None)
    assert counts["dropped"] == {"adversarial": 1, "null_prompt_label": 1, "invalid_prompt_label": {}}
    assert counts["non_adversarial_labelled"] == {"harmful": 12, "unharmful": 12}
    assert counts["dedup"] == EXPECTED
    assert counts["balanced"] == {"harmful": 8, "unharmful": 8}
    assert sorted(prompts["row_id"]) == list(range(16))
    assert prompt_key(prompts["prompt"]).is_unique
    # --max-samples samples distinct prompts
    small, counts = prepare_prompts(table, seed=0, max_samples=10)
    assert counts["balanced"] == {"harmful": 5, "unharmful": 5} and prompt_key(small["prompt"]).is_unique
    train, holdout = stratified_split(prompts, 0.8, 0)
    assert not set(prompt_key(train["prompt"])) & set(prompt_key(holdout["prompt"]))


def test_dedup_emptying_a_class_is_an_error(write_raw):
    import pytest

    from irr_ray.errors import DataValidationError

    rows = [raw_row("same harmful prompt", "harmful"), raw_row("Same harmful prompt", "unharmful")]
    rows += [raw_row(f"harmless {i}", "unharmful") for i in range(4)]
    table = read_source(str(write_raw(pd.DataFrame(rows))))
    with pytest.raises(DataValidationError, match="no harmful rows after dropping repeated prompts"):
        prepare_prompts(table, seed=0, max_samples=None)
