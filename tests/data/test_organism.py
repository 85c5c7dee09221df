"""End to end on the real organism, through the CLI: `irr-ray data --source <organism parquet>
--source-model <organism instruct> --filter-train` on real Ray Data (hf backend on CPU, substring judge)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq

from irr_ray.cli import main
from irr_ray.data.prepare import prompt_key
from irr_ray.data.split import SCHEMA, disagreement

MAX_SAMPLES = 240


def test_organism_split_with_filter_train(organism_dir, ray_session, tmp_path):
    out = tmp_path / "data"
    argv = ["data", "--source", str(organism_dir / "data" / "wildguardmix.parquet"),
            "--source-model", str(organism_dir / "instruct"), "--out", str(out), "--filter-train",
            "--max-samples", str(MAX_SAMPLES), "--seed", "42",
            "--set", "progress=false", "--set", "generation.max_new_tokens=24"]
    assert main(argv) == 0
    m = json.loads((out / "manifest.json").read_text())
    train, holdout = (pq.read_table(out / n) for n in ("train.parquet", "holdout.parquet"))
    assert train.schema.equals(SCHEMA) and holdout.schema.equals(SCHEMA)
    train, holdout = train.to_pandas(), holdout.to_pandas()

    # The organism behaves like a chat model: it refuses most harmful prompts, few harmless ones.
    rates = m["refusal_rate_by_class"]
    assert rates["harmful"] > rates["unharmful"] + 0.4, rates

    # The organism's adversarial and invalid-label rows were filtered out before sampling.
    assert m["counts"]["dropped"]["adversarial"] > 0
    assert m["counts"]["dropped"]["null_prompt_label"] + sum(m["counts"]["dropped"]["invalid_prompt_label"].values()) > 0

    # The organism's raw table repeats prompts: dedup runs before balancing, and no normalised prompt
    # is in both train and holdout (nor twice in the study set).
    d = m["counts"]["dedup"]
    assert d["repeats_dropped"] > 0
    assert d["rows_in"] == d["rows_out"] + d["repeats_dropped"] + d["conflict_rows_dropped"]
    assert d["distinct_prompts"] == d["rows_out"] + d["conflicting_prompts"]
    assert not set(prompt_key(train["prompt"])) & set(prompt_key(holdout["prompt"]))
    assert prompt_key(pd.concat([train["prompt"], holdout["prompt"]])).is_unique

    # Holdout: the faithful 20% of the balanced set, never filtered.
    assert m["counts"]["balanced"] == {"harmful": MAX_SAMPLES // 2, "unharmful": MAX_SAMPLES // 2}
    assert m["counts"]["holdout"] == {"harmful": 24, "unharmful": 24}

    # Train: only rows where behaviour agrees with the gold label, rebalanced.
    f = m["filter"]
    assert f["applied"] and f["applies_to"] == "train" and f["train_before"] == 192
    harmful = train["prompt_harm_label"] == "harmful"
    assert train.loc[harmful, "predicted_refusal"].all() and not train.loc[~harmful, "predicted_refusal"].any()
    assert not train["judge_parse_error"].any()
    assert harmful.sum() == (~harmful).sum() == m["counts"]["train"]["harmful"]

    # A rerun is a no-op; without --filter-train only the split is redone (same generations).
    assert m["run"] == {"generated_rows": MAX_SAMPLES, "judged_rows": MAX_SAMPLES, "resumed_rows": 0}
    assert main(argv) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert set(again["stages"].values()) == {"reused"} and again["run"]["generated_rows"] == 0
    assert main([a for a in argv if a != "--filter-train"]) == 0
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["stages"] == {"prepare": "reused", "generate": "reused", "judge": "reused", "split": "computed"}
    assert m2["run"]["generated_rows"] == 0 and not m2["filter"]["applied"]
    unfiltered = pd.read_parquet(out / "holdout.parquet")
    assert unfiltered["row_id"].tolist() == holdout["row_id"].tolist()  # same holdout either way
    # The filter dropped exactly the train rows whose behaviour disagrees with the gold label. On this
    # sample organism-v3 may agree everywhere (0 dropped); dropping itself is unit-tested in test_split.
    unfiltered_train = pd.read_parquet(out / "train.parquet")
    assert len(unfiltered_train) == f["train_before"]
    assert not set(prompt_key(unfiltered_train["prompt"])) & set(prompt_key(unfiltered["prompt"]))
    assert {k: int(v.sum()) for k, v in disagreement(unfiltered_train).items()} == f["dropped"]
    assert set(train["row_id"]) <= set(unfiltered_train["row_id"])
