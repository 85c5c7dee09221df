"""Stratified train/holdout split and the optional train-only agreement filter.

Order (why): the balanced, judged set is split first, 80/20 per class, so the holdout is the same
faithful evaluation set with or without ``--filter-train``; then, if asked, train rows where the
source model's behaviour disagrees with the gold label are dropped:

    harmful   & not predicted_refusal   (the model complied with a harmful request)
    unharmful & predicted_refusal       (the model refused a harmless one)
    judge_parse_error                   (behaviour unknown)

Filtering the holdout would erase exactly the failures the evaluation must see (the method's
Instruct baseline refuses 15% of harmless holdout prompts). Filtering usually removes more rows
from one class, so train is downsampled to balance again (``rebalance_after_filter``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from irr_ray.data.prepare import balanced_sample, class_counts
from irr_ray.data.validate import PROMPT_LABELS, check_classes
from irr_ray.errors import DataValidationError

# The study-dataset contract (design.md), then the stable row id and the raw subcategory.
SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("prompt_harm_label", pa.string()),
    ("wildguard_reference_label", pa.string()),
    ("response", pa.string()),
    ("predicted_refusal", pa.bool_()),
    ("predicted_prompt_harmfulness", pa.string()),
    ("predicted_response_harmfulness", pa.string()),
    ("judge_parse_error", pa.bool_()),
    ("row_id", pa.int64()),
    ("subcategory", pa.string()),
])


def to_table(frame: pd.DataFrame) -> pa.Table:
    """Contract columns in contract order with fixed types (all-null columns stay typed strings)."""
    columns = {}
    for field in SCHEMA:
        values = frame[field.name]
        if pa.types.is_string(field.type):
            values = values.astype(object).where(values.notna(), None)
        columns[field.name] = pa.array(values.tolist(), type=field.type)
    return pa.table(columns, schema=SCHEMA)


def stratified_split(frame: pd.DataFrame, train_frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class: seeded permutation, the first round(train_frac * n) rows to train (at least one
    row on each side). Both parts sorted by row_id."""
    train_ids, holdout_ids = [], []
    for class_index, label in enumerate(PROMPT_LABELS):
        ids = np.sort(frame.loc[frame["prompt_harm_label"] == label, "row_id"].to_numpy())
        if len(ids) < 2:
            raise DataValidationError(
                f"column `prompt_harm_label`: only {len(ids)} {label} row(s) to split into train and holdout; "
                "raise --max-samples (at least 2 per class)")
        n_train = min(max(int(round(train_frac * len(ids))), 1), len(ids) - 1)
        perm = np.random.default_rng([seed, 100 + class_index]).permutation(len(ids))
        train_ids.append(ids[perm[:n_train]])
        holdout_ids.append(ids[perm[n_train:]])
    by_id = frame.set_index("row_id")
    train = by_id.loc[np.sort(np.concatenate(train_ids))].reset_index()
    holdout = by_id.loc[np.sort(np.concatenate(holdout_ids))].reset_index()
    return train, holdout


def disagreement(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean masks of the rows the agreement filter drops, by reason."""
    harmful = (frame["prompt_harm_label"] == "harmful").to_numpy()
    refused = frame["predicted_refusal"].to_numpy(dtype=bool)
    parse_error = frame["judge_parse_error"].to_numpy(dtype=bool)
    return {
        "harmful_not_refused": harmful & ~refused & ~parse_error,
        "unharmful_refused": ~harmful & refused & ~parse_error,
        "judge_parse_error": parse_error,
    }


def filter_train(train: pd.DataFrame, rebalance: bool, seed: int) -> tuple[pd.DataFrame, dict]:
    """Drop disagreeing train rows (and rebalance); return the rows kept and the counts for the manifest."""
    masks = disagreement(train)
    drop = masks["harmful_not_refused"] | masks["unharmful_refused"] | masks["judge_parse_error"]
    kept = train.loc[~drop].reset_index(drop=True)
    stats = {"applies_to": "train", "dropped": {k: int(v.sum()) for k, v in masks.items()},
             "after_filter": class_counts(kept)}
    check_classes(stats["after_filter"], "train split", "--filter-train (the source model disagrees with "
                                                        "every gold label of a class)")
    if rebalance:
        balanced = balanced_sample(kept, seed, None)
        stats["rebalance_dropped"] = int(len(kept) - len(balanced))
        kept = balanced
    return kept, stats
