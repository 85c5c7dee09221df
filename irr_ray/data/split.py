"""Stratified train/holdout split by prompt, and the optional train-only agreement filter.

The split is by prompt, never by row: its unit is the normalised prompt text
(:func:`irr_ray.data.prepare.prompt_key`), so no prompt is in both train and holdout. The prepared
prompts are already deduplicated (one row per key, label conflicts dropped; see
``irr_ray.data.prepare``), so here each unit is one row; the split still groups by key, so a frame
that bypassed dedup cannot leak a prompt into the holdout either, and a key carrying both labels is
an error (its class is unknown).

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

from irr_ray.data.prepare import balanced_sample, class_counts, prompt_key
from irr_ray.data.validate import PROMPT_LABELS, check_classes
from irr_ray.errors import DataValidationError

# The study-dataset contract (ARCHITECTURE.md, "Study dataset"), then the stable row id and the raw subcategory.
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
    """Per class, over the class's distinct prompts (ordered by first row_id): seeded permutation,
    the first round(train_frac * n) prompts to train (at least one on each side); every row of a
    prompt goes where the prompt goes. Both parts sorted by row_id.

    On deduplicated input (one row per prompt) this is the per-row split it always was: same seed,
    same rows on each side."""
    key = prompt_key(frame["prompt"])
    label = frame["prompt_harm_label"]
    mixed = frame.groupby(key, sort=False)["prompt_harm_label"].transform("nunique").to_numpy() > 1
    if mixed.any():
        shown = ", ".join(repr(p) for p in frame.loc[mixed, "prompt"].drop_duplicates().head(3))
        raise DataValidationError(
            f"column `prompt_harm_label`: {int(mixed.sum())} row(s) repeat a prompt under both labels "
            f"(e.g. {shown}); such prompts are dropped when the prompts are prepared")
    to_train = np.zeros(len(frame), dtype=bool)
    for class_index, name in enumerate(PROMPT_LABELS):
        in_class = (label == name).to_numpy()
        first_ids = frame.loc[in_class, "row_id"].groupby(key[in_class], sort=False).min().sort_values()
        n = len(first_ids)
        if n < 2:
            raise DataValidationError(
                f"column `prompt_harm_label`: only {n} {name} prompt(s) to split into train and holdout; "
                "raise --max-samples (at least 2 per class)")
        n_train = min(max(int(round(train_frac * n)), 1), n - 1)
        perm = np.random.default_rng([seed, 100 + class_index]).permutation(n)
        to_train[in_class] = key[in_class].isin(first_ids.index[perm[:n_train]]).to_numpy()
    train = frame.loc[to_train].sort_values("row_id", kind="stable").reset_index(drop=True)
    holdout = frame.loc[~to_train].sort_values("row_id", kind="stable").reset_index(drop=True)
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
