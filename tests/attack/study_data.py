"""Test fixture helper (a stand-in for the data stage's output, named as such): a study dataset
(``train.parquet`` / ``holdout.parquet`` with ``prompt`` and ``prompt_harm_label``) made directly from
the organism's WildGuardMix-shaped parquet — non-adversarial rows with a valid label, distinct
prompts, balanced classes, a seeded 80/20 split. The data stage (``irr-ray data``) produces the real
one, with generated responses and judge columns the attack does not read."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def fixture_study_dataset(source_parquet: str | Path, out_dir: str | Path, n_per_class: int = 200,
                          seed: int = 0, train_frac: float = 0.8) -> Path:
    """Write ``train.parquet`` and ``holdout.parquet`` into ``out_dir`` (returned)."""
    df = pd.read_parquet(source_parquet)
    df = df[~df["adversarial"] & df["prompt_harm_label"].isin(["harmful", "unharmful"])]
    df = df.drop_duplicates("prompt")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": [], "holdout": []}
    for label in ("harmful", "unharmful"):
        rows = df[df["prompt_harm_label"] == label].sample(frac=1.0, random_state=seed).head(n_per_class)
        cut = int(round(train_frac * len(rows)))
        parts["train"].append(rows.iloc[:cut])
        parts["holdout"].append(rows.iloc[cut:])
    for split, frames in parts.items():
        pd.concat(frames).sample(frac=1.0, random_state=seed).reset_index(drop=True).to_parquet(out / f"{split}.parquet")
    return out
