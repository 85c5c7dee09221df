"""Balancing, stratified sampling, the 80/20 split by prompt and the train-only agreement filter (pure pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from irr_ray.data.prepare import balanced_sample, class_counts, prompt_key
from irr_ray.data.split import SCHEMA, disagreement, filter_train, stratified_split, to_table
from irr_ray.errors import DataValidationError


def _frame(n_harmful: int, n_harmless: int) -> pd.DataFrame:
    labels = ["harmful"] * n_harmful + ["unharmful"] * n_harmless
    return pd.DataFrame({"row_id": np.arange(len(labels), dtype=np.int64) * 3, "prompt_harm_label": labels,
                         "prompt": [f"prompt {i}" for i in range(len(labels))]})


def test_balance_downsamples_majority_seeded():
    frame = _frame(30, 10)
    a, b, c = (balanced_sample(frame, s, None) for s in (1, 1, 2))
    assert class_counts(a) == {"harmful": 10, "unharmful": 10}
    assert a["row_id"].tolist() == b["row_id"].tolist() != c["row_id"].tolist()
    assert a["row_id"].is_monotonic_increasing
    assert set(a.loc[a["prompt_harm_label"] == "unharmful", "row_id"]) == set(
        frame.loc[frame["prompt_harm_label"] == "unharmful", "row_id"])  # minority kept whole


def test_max_samples_stratified_and_nested():
    frame = _frame(30, 20)
    small, large = balanced_sample(frame, 7, 8), balanced_sample(frame, 7, 21)
    assert class_counts(small) == {"harmful": 4, "unharmful": 4}
    assert class_counts(large) == {"harmful": 10, "unharmful": 10}
    assert set(small["row_id"]) <= set(large["row_id"])


def test_stratified_split():
    frame = _frame(50, 50)
    train, holdout = stratified_split(frame, 0.8, 42)
    assert class_counts(train) == {"harmful": 40, "unharmful": 40}
    assert class_counts(holdout) == {"harmful": 10, "unharmful": 10}
    assert not set(train["row_id"]) & set(holdout["row_id"])
    assert sorted([*train["row_id"], *holdout["row_id"]]) == sorted(frame["row_id"])
    again, _ = stratified_split(frame, 0.8, 42)
    other, _ = stratified_split(frame, 0.8, 43)
    assert train["row_id"].tolist() == again["row_id"].tolist() != other["row_id"].tolist()
    with pytest.raises(DataValidationError, match="at least 2 per class"):
        stratified_split(_frame(1, 1), 0.8, 0)


def test_stratified_split_keeps_every_copy_of_a_prompt_on_one_side():
    """A frame that bypassed dedup (copies differing in case/whitespace) still cannot leak a prompt:
    the unit of the split is the normalised prompt; a prompt carrying both labels is an error."""
    frame = _frame(20, 20)
    copies = frame.iloc[[0, 0, 3, 25, 25, 25]].copy()
    copies["prompt"] = ["  PROMPT 0", "prompt\t\t0 ", "Prompt 3\n", "prompt   25", "PROMPT 25", " prompt 25"]
    copies["row_id"] = np.arange(len(copies)) + 1000
    frame = pd.concat([frame, copies], ignore_index=True)
    train, holdout = stratified_split(frame, 0.8, 5)
    assert len(train) + len(holdout) == len(frame)
    assert not set(prompt_key(train["prompt"])) & set(prompt_key(holdout["prompt"]))
    # 20 distinct prompts per class: 16 + 4, whatever the copies
    assert prompt_key(train["prompt"]).nunique() == 32 and prompt_key(holdout["prompt"]).nunique() == 8
    assert train["row_id"].is_monotonic_increasing and holdout["row_id"].is_monotonic_increasing
    mixed = pd.concat([frame, frame.iloc[[1]].assign(prompt_harm_label="unharmful", row_id=2000)],
                      ignore_index=True)
    with pytest.raises(DataValidationError, match="repeat a prompt under both labels"):
        stratified_split(mixed, 0.8, 5)


def _judged() -> pd.DataFrame:
    frame = _frame(6, 6)
    frame["predicted_refusal"] = [True, True, True, True, False, False,   # 2 harmful complied
                                  False, False, False, False, False, True]  # 1 harmless refused
    frame["judge_parse_error"] = [False] * 3 + [True] + [False] * 8       # 1 unknown
    return frame


def test_disagreement_masks():
    masks = disagreement(_judged())
    assert {k: int(v.sum()) for k, v in masks.items()} == {
        "harmful_not_refused": 2, "unharmful_refused": 1, "judge_parse_error": 1}


def test_filter_train_drops_disagreeing_rows_and_rebalances():
    kept, stats = filter_train(_judged(), rebalance=True, seed=0)
    assert stats["dropped"] == {"harmful_not_refused": 2, "unharmful_refused": 1, "judge_parse_error": 1}
    assert stats["after_filter"] == {"harmful": 3, "unharmful": 5}
    assert class_counts(kept) == {"harmful": 3, "unharmful": 3} and stats["rebalance_dropped"] == 2
    harmful = kept["prompt_harm_label"] == "harmful"
    assert kept.loc[harmful, "predicted_refusal"].all() and not kept.loc[~harmful, "predicted_refusal"].any()
    unbalanced, _ = filter_train(_judged(), rebalance=False, seed=0)
    assert class_counts(unbalanced) == {"harmful": 3, "unharmful": 5}


def test_filter_train_empty_class_is_an_error():
    frame = _judged()
    frame["predicted_refusal"] = False  # the model never refuses: no harmful row agrees
    frame["judge_parse_error"] = False
    with pytest.raises(DataValidationError, match="no harmful rows after --filter-train"):
        filter_train(frame, rebalance=True, seed=0)


def test_output_schema_types_all_null_columns():
    frame = pd.DataFrame({
        "prompt": ["p"], "prompt_harm_label": ["harmful"], "wildguard_reference_label": [None],
        "response": ["r"], "predicted_refusal": [True], "predicted_prompt_harmfulness": [None],
        "predicted_response_harmfulness": [None], "judge_parse_error": [False], "row_id": [5],
        "subcategory": [float("nan")]})
    table = to_table(frame)
    assert table.schema == SCHEMA
    assert table.column("predicted_prompt_harmfulness").null_count == 1
    assert table.column("subcategory").null_count == 1
