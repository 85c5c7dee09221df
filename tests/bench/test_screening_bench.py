"""``irr-ray bench attack --screening --quick`` runs end to end on real (tiny, random-init) models of
three families and prints the recall table; screening never changes a choice it certifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_screening_bench_quick_prints_the_recall_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from irr_ray.cli import main

    out = tmp_path / "screening.json"
    assert main(["bench", "attack", "--screening", "--quick", "--organism-dir", str(tmp_path / "none"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "has no instruct/ model" in text  # a missing organism is skipped with a message
    assert "recall of the exact choice" in text
    for family in ("random llama", "random qwen2", "random gemma2"):
        assert family in text
    result = json.loads(out.read_text())
    assert result["totals"]["iterations"] == 6
    for model in result["models"]:
        assert model["iterations"] == 2 and model["exact_refusal"] == model["candidates"]
        for variant in ("screened", "screened+fallback"):
            assert 0 < model[variant]["refusal"] <= model["candidates"]
    for rows in result["rows"].values():
        for row in rows:
            # a random model never passes induce ≥ 0: every iteration is the fallback, which the default
            # screen scores completely (identical choice by construction)
            assert row["fallback"] and row["screened"]["same"] and row["screened"]["refusal"] == row["candidates"]
            if row["screened+fallback"]["certain"]:
                assert row["screened+fallback"]["same"]
