"""Prompt selection (the method's "build the dataset", before generation).

1. keep non-adversarial rows whose ``prompt_harm_label`` is harmful or unharmful (null and, unless
   validation was asked to reject them, other values are dropped and counted by value);
2. deduplicate by prompt (:func:`dedup_prompts`): each prompt's key is its text stripped, with
   whitespace runs collapsed to one space and casefolded (:func:`prompt_key`). Of the rows sharing
   a key, the first (lowest ``row_id``) is kept; a key whose rows disagree on ``prompt_harm_label``
   is dropped whole (its gold label is unknown). Why: WildGuardMix and the organism's raw table
   repeat prompts (the organism's 4,000 rows hold 3,507 distinct ones), and a row-level split put
   the same prompt text in train and holdout (138 of the holdout's prompts), so the holdout no
   longer measured held-out prompts and the balanced counts double-counted prompts. Dedup runs
   before balancing and ``max_samples`` so those counts are distinct prompts; the counts of what
   it dropped go to the manifest (``counts.dedup``);
3. rename ``response_refusal_label`` -> ``wildguard_reference_label`` (WildGuardMix's own label for
   its stored response; kept for reference, never used to decide anything);
4. balance the classes by downsampling the majority, and cap at ``max_samples`` (stratified):
   each class is shuffled once with a generator seeded by (seed, class), and the first
   ``k = min(n_harmful, n_unharmful, max_samples // 2)`` rows of each are kept. The same seed
   therefore gives nested samples: the 100-prompt set is a subset of the 200-prompt set.

Rows keep ``row_id`` = their position in the raw table, the stable key every later sub-stage sorts by.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from irr_ray.data.ingest import RawTable
from irr_ray.data.validate import PROMPT_LABELS, check_classes

PREPARED_COLUMNS = ("row_id", "prompt", "prompt_harm_label", "wildguard_reference_label", "subcategory")
# Part of the prepare sub-stage's cache key: bump when the selection rule changes, so a cache
# written under the old rule is never reused. 2: deduplicated by normalised prompt.
PREPARE_VERSION = 2


def class_counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["prompt_harm_label"].value_counts()
    return {c: int(counts.get(c, 0)) for c in PROMPT_LABELS}


def prompt_key(prompts: pd.Series) -> pd.Series:
    """The prompt's identity for dedup and the split: whitespace runs -> one space, stripped, casefolded."""
    return prompts.astype(str).str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()


def dedup_prompts(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per normalised prompt: the first (lowest ``row_id``) of each key's rows; every row
    of a key whose rows disagree on ``prompt_harm_label`` is dropped. ``frame`` must be sorted by
    ``row_id``. Returns the kept rows and the counts for the manifest::

        rows_in = rows_out + repeats_dropped + conflict_rows_dropped
        distinct_prompts = rows_out + conflicting_prompts
    """
    key = prompt_key(frame["prompt"])
    conflict = (frame.groupby(key, sort=False)["prompt_harm_label"].transform("nunique") > 1).to_numpy()
    later = key.duplicated(keep="first").to_numpy()  # not the first row of its key
    repeat = later & ~conflict  # a later copy of a prompt whose copies agree
    kept = frame.loc[~later & ~conflict].reset_index(drop=True)
    stats = {
        "rows_in": int(len(frame)),
        "distinct_prompts": int(key.nunique()),
        "repeated_prompts": int(key[repeat].nunique()),
        "repeats_dropped": int(repeat.sum()),
        "conflicting_prompts": int(key[conflict].nunique()),
        "conflict_rows_dropped": int(conflict.sum()),
        "rows_out": int(len(kept)),
        "kept_by_class": class_counts(kept),
    }
    return kept, stats


def balanced_sample(frame: pd.DataFrame, seed: int, max_samples: int | None) -> pd.DataFrame:
    """Equal rows per class: the first k of each class's seeded permutation, sorted by row_id."""
    counts = class_counts(frame)
    k = min(counts.values())
    if max_samples is not None:
        k = min(k, max_samples // 2)
    keep = []
    for class_index, label in enumerate(PROMPT_LABELS):
        ids = frame.loc[frame["prompt_harm_label"] == label, "row_id"].to_numpy()
        rng = np.random.default_rng([seed, class_index])
        keep.append(ids[rng.permutation(len(ids))[:k]])
    chosen = np.sort(np.concatenate(keep))
    return frame.set_index("row_id").loc[chosen].reset_index()


def prepare_prompts(table: RawTable, seed: int, max_samples: int | None) -> tuple[pd.DataFrame, dict]:
    """Validated raw table -> (prepared prompts, counts at each step for the manifest)."""
    raw = table.frame
    adversarial = raw["adversarial"].astype(bool)
    label = raw["prompt_harm_label"]
    valid = label.isin(PROMPT_LABELS)
    kept = raw[~adversarial & valid]
    invalid = label[~adversarial & ~valid & label.notna()].value_counts()
    frame = pd.DataFrame({
        "row_id": kept.index.to_numpy(dtype=np.int64),
        "prompt": kept["prompt"].astype(str).to_numpy(),
        "prompt_harm_label": kept["prompt_harm_label"].astype(str).to_numpy(),
        "wildguard_reference_label": kept["response_refusal_label"].astype(object)
                                          .where(kept["response_refusal_label"].notna(), None).to_numpy(),
        "subcategory": (kept["subcategory"].astype(object).where(kept["subcategory"].notna(), None).to_numpy()
                        if "subcategory" in kept.columns else [None] * len(kept)),
    })
    after_filter = class_counts(frame)
    check_classes(after_filter, table.name, "keeping non-adversarial rows with a harmful/unharmful label")
    frame, dedup = dedup_prompts(frame)
    check_classes(dedup["kept_by_class"], table.name,
                  "dropping repeated prompts and prompts whose copies disagree on the label")
    sampled = balanced_sample(frame, seed, max_samples)
    counts = {
        "raw_rows": int(len(raw)),
        "dropped": {
            "adversarial": int(adversarial.sum()),
            "null_prompt_label": int((~adversarial & label.isna()).sum()),
            "invalid_prompt_label": {str(k): int(v) for k, v in invalid.items()},
        },
        "non_adversarial_labelled": after_filter,
        "dedup": dedup,
        "balanced": class_counts(sampled),
    }
    check_classes(counts["balanced"], table.name, f"balancing with max_samples={max_samples}")
    return sampled[list(PREPARED_COLUMNS)], counts
