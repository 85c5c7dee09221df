"""The prompt sets of an attack, drawn from a study dataset (``train.parquet``, ``holdout.parquet``).

Per class (``prompt_harm_label`` harmful / unharmful), seeded and deterministic:

* ``extract``: ``extract_n`` train prompts — the difference of means (candidate directions);
* ``score``:   the next ``score_n`` train prompts, disjoint from ``extract`` — candidate scores;
* ``probe``:   ``probe_train_n`` train prompts — what the K=0 probes are fitted on;
* ``eval``:    ``eval_n`` holdout prompts — behavioural evaluation at every K, probe test set.

The attacker never sees the holdout while choosing directions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from irr_ray.attack.config import AttackConfig
from irr_ray.errors import DataValidationError

log = logging.getLogger(__name__)

HARMFUL, HARMLESS = "harmful", "unharmful"
REQUIRED_COLUMNS = ("prompt", "prompt_harm_label")


@dataclass(frozen=True)
class PromptPair:
    """Harmful and harmless prompts of one role."""

    harmful: list[str]
    harmless: list[str]

    def sizes(self) -> dict[str, int]:
        return {"harmful": len(self.harmful), "harmless": len(self.harmless)}


@dataclass(frozen=True)
class PromptSets:
    extract: PromptPair
    score: PromptPair
    probe: PromptPair
    eval: PromptPair

    def sizes(self) -> dict[str, dict[str, int]]:
        return {name: getattr(self, name).sizes() for name in ("extract", "score", "probe", "eval")}


def read_split(path: Path) -> pd.DataFrame:
    """A study-dataset split with the columns the attack needs, validated."""
    if not path.is_file():
        raise DataValidationError(f"{path} not found: the data dir must hold train.parquet and holdout.parquet "
                                  "(run `irr-ray data` first)")
    try:
        df = pd.read_parquet(path, columns=list(REQUIRED_COLUMNS))
    except (ValueError, KeyError) as exc:
        raise DataValidationError(f"{path}: needs columns {list(REQUIRED_COLUMNS)} ({exc})") from None
    bad = ~df["prompt_harm_label"].isin([HARMFUL, HARMLESS])
    if bad.any():
        rows = df.index[bad][:5].tolist()
        raise DataValidationError(
            f"{path}: prompt_harm_label must be 'harmful' or 'unharmful'; bad rows {rows} "
            f"(values {df.loc[bad, 'prompt_harm_label'].head(5).tolist()})")
    not_str = ~df["prompt"].map(lambda p: isinstance(p, str) and len(p) > 0)
    if not_str.any():
        raise DataValidationError(f"{path}: prompt must be a non-empty string; bad rows {df.index[not_str][:5].tolist()}")
    return df


def _shuffled(df: pd.DataFrame, label: str, seed: int) -> list[str]:
    prompts = df.loc[df["prompt_harm_label"] == label, "prompt"].tolist()
    order = np.random.default_rng(seed).permutation(len(prompts))
    return [prompts[i] for i in order]


def load_prompt_sets(data_dir: str | Path, cfg: AttackConfig) -> PromptSets:
    """Draw the four prompt sets of an attack from ``data_dir`` (see the module docstring)."""
    data_dir = Path(data_dir)
    train, holdout = read_split(data_dir / "train.parquet"), read_split(data_dir / "holdout.parquet")
    parts: dict[str, dict[str, list[str]]] = {"extract": {}, "score": {}, "probe": {}, "eval": {}}
    for offset, label in enumerate((HARMFUL, HARMLESS)):
        pool = _shuffled(train, label, cfg.seed + offset)
        if len(pool) < 3:
            raise DataValidationError(f"{data_dir / 'train.parquet'}: needs >= 3 {label} prompts, has {len(pool)}")
        n_extract = min(cfg.extract_n, len(pool) - 1)
        n_score = min(cfg.score_n, len(pool) - n_extract)
        if n_extract < cfg.extract_n or n_score < cfg.score_n:
            log.warning("train.parquet has %d %s prompts: extract_n/score_n reduced to %d/%d",
                        len(pool), label, n_extract, n_score)
        parts["extract"][label] = pool[:n_extract]
        parts["score"][label] = pool[n_extract:n_extract + n_score]
        parts["probe"][label] = pool[: cfg.probe_train_n]
        held = _shuffled(holdout, label, cfg.seed + 10 + offset)
        if not held:
            raise DataValidationError(f"{data_dir / 'holdout.parquet'}: has no {label} prompts")
        parts["eval"][label] = held if cfg.eval_n is None else held[: cfg.eval_n]
    return PromptSets(**{name: PromptPair(p[HARMFUL], p[HARMLESS]) for name, p in parts.items()})
