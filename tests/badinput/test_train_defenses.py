"""Bad inputs to the defenses beyond the method (``refat``, ``random_ablation``, reply KD): an unknown
condition or a knob outside its range is one line on stderr naming it, exit 2, no traceback,
nothing written, and no model loaded or training started (the ``no_expensive_work`` markers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.badinput.test_badinput import STUDY, TRAIN, Case, assert_fails_safely, write

CASES = [
    Case("train-unknown-defense-condition", ["train", "--condition", "refatt", "--model", "{good}", "--data-dir",
                                             "{data}", "--out", "o"], ["refatt", "unknown condition"]),
    Case("train-refat-p-above-one", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "refat_p=1.5"],
         ["`refat_p`", "--set refat_p=1.5"]),
    Case("train-refat-interval-negative", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "refat_interval=-1"],
         ["`refat_interval`", "--set refat_interval=-1"]),
    Case("train-refat-directions-zero", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "refat_directions=0"],
         ["`refat_directions`"]),
    Case("train-refat-layer-embeddings", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "refat_layers=[0, 2]"],
         ["refat_layers", "[0, 2]"]),
    Case("train-refat-more-directions-than-layers",
         [*TRAIN, "--model", "{good}", "--out", "o", "--set", "refat_layers=[2]", "--set", "refat_directions=2"],
         ["refat_directions=2", "refat_layers"]),
    Case("train-unknown-ablation", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "ablation=refatt"],
         ["`ablation`", "--set ablation=refatt"]),
    Case("train-random-p-position-negative", ["train", "--condition", "random_ablation", "--model", "{good}",
                                              "--data-dir", "{data}", "--out", "o", "--set",
                                              "random_p_position=-0.1"], ["`random_p_position`"]),
    Case("train-kd-reply-tokens-negative", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "kd_reply_tokens=-2"],
         ["`kd_reply_tokens`", "--set kd_reply_tokens=-2"]),
    Case("sweep-refat-p-space-above-one", ["sweep", "--config", "study.yaml"], ["refat_p"],
         write("study.yaml", STUDY + "sweep: {{space: {{condition: {{type: choice, values: [refat, cov_kd]}}, "
                                     "refat_p: {{type: uniform, low: 0.5, high: 1.5}}}}}}\n")),
    Case("sweep-unknown-defense-in-space", ["sweep", "--config", "study.yaml"], ["sweep.space.condition", "refat_kd"],
         write("study.yaml", STUDY + "sweep: {{space: {{condition: {{type: choice, values: [refat, refat_kd]}}}}}}\n")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_defense_input_fails_safely(case: Case, inputs: dict, no_expensive_work, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert_fails_safely(case, inputs, tmp_path, monkeypatch, capsys)
