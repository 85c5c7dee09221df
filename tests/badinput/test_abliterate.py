"""Bad inputs to ``irr-ray abliterate``: one line on stderr naming the culprit, exit 2, no traceback,
nothing written (the working directory and the inputs hashed before and after), and no model
loaded (the ``no_expensive_work`` markers raise if loading starts before the checks are done)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from irr_ray.cli import main
from irr_ray.core.directions import save_directions
from tests.badinput.test_badinput import Case, assert_fails_safely


def _directions(name: str, rows: int, width: int | None = None) -> Callable[[Path, dict], None]:
    def setup(cwd: Path, inputs: dict) -> None:
        w = width or json.loads((Path(inputs["good"]) / "config.json").read_text())["hidden_size"]
        save_directions(cwd / name, torch.nn.functional.normalize(torch.randn(rows, w), dim=1), {})
    return setup


def _gemma2_dir(cwd: Path, inputs: dict) -> None:
    """The organism's files under a gemma2 config (a post-norm family); never loaded."""
    d = cwd / "gemma2"
    shutil.copytree(inputs["good"], d)
    good = json.loads((Path(inputs["good"]) / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({
        "model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "hidden_size": good["hidden_size"],
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 32,
        "intermediate_size": 256, "vocab_size": good["vocab_size"]}))
    _directions("d.safetensors", 1)(cwd, inputs)


def _foreign_out(cwd: Path, inputs: dict) -> None:
    (cwd / "o").mkdir()
    (cwd / "o" / "notes.txt").write_text("keep me\n")
    _directions("d.safetensors", 1)(cwd, inputs)


def _no_key(cwd: Path, inputs: dict) -> None:
    from safetensors.torch import save_file

    save_file({"refusal": torch.zeros(1, 4)}, str(cwd / "d.safetensors"))


ABL = ["abliterate", "--model", "{good}", "--out", "o"]
CASES = [
    Case("width-mismatch", [*ABL, "--directions", "d.safetensors"], ["d.safetensors", "hidden size", "64 wide"],
         _directions("d.safetensors", 1, width=64)),
    Case("k-zero", [*ABL, "--directions", "d.safetensors", "--k", "0"], ["--k 0"], _directions("d.safetensors", 1)),
    Case("k-negative", [*ABL, "--directions", "d.safetensors", "--k", "-2"], ["--k -2"],
         _directions("d.safetensors", 1)),
    Case("k-above-rows", [*ABL, "--directions", "d.safetensors", "--k", "3"], ["d.safetensors", "2 direction(s)"],
         _directions("d.safetensors", 2)),
    Case("dependent-rows", [*ABL, "--directions", "d.safetensors"], ["d.safetensors", "dependent"],
         lambda cwd, inputs: save_directions(
             cwd / "d.safetensors", torch.ones(2, json.loads((Path(inputs["good"]) / "config.json").read_text())
                                               ["hidden_size"]), {})),
    Case("directions-missing", [*ABL, "--directions", "nope.safetensors"], ["nope.safetensors", "not found"]),
    Case("directions-without-key", [*ABL, "--directions", "d.safetensors"], ["d.safetensors", "'directions'"],
         _no_key),
    Case("directions-not-safetensors", [*ABL, "--directions", "d.safetensors"], ["d.safetensors", "safetensors"],
         lambda cwd, inputs: (cwd / "d.safetensors").write_text("not a tensor file")),
    Case("post-norm-family", ["abliterate", "--model", "gemma2", "--directions", "d.safetensors", "--out", "o"],
         ["'gemma2'", "post-norm", "--approximate"], _gemma2_dir),
    Case("out-foreign-dir", [*ABL, "--directions", "d.safetensors"], ["--out o", "non-empty directory"],
         _foreign_out),
    Case("out-is-user-file", ["abliterate", "--model", "{good}", "--out", "d.safetensors", "--directions",
                              "d.safetensors"], ["--out d.safetensors", "existing file"],
         _directions("d.safetensors", 1)),
    Case("model-truncated", ["abliterate", "--model", "{models}/trunc", "--directions", "d.safetensors",
                             "--out", "o"], ["trunc/model.safetensors", "truncated"], _directions("d.safetensors", 1)),
    Case("model-unsupported", ["abliterate", "--model", "{models}/bert", "--directions", "d.safetensors",
                               "--out", "o"], ["unsupported architecture", "bert"], _directions("d.safetensors", 1)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_safely(case: Case, inputs: dict, no_expensive_work, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    assert_fails_safely(case, inputs, tmp_path, monkeypatch, capsys)


def test_valid_input_reaches_the_model_load(inputs: dict, no_expensive_work, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: valid input (also a post-norm family with --approximate) passes every check and hits
    the loading marker, so the cases above were rejected by the checks, not by the marker."""
    from tests.badinput.conftest import ExpensiveWorkStarted

    monkeypatch.chdir(tmp_path)
    ctx = {k: str(v) for k, v in inputs.items()}
    _gemma2_dir(tmp_path, ctx)
    for model, extra in ((ctx["good"], ["--k", "1"]), ("gemma2", ["--approximate"])):
        with pytest.raises(ExpensiveWorkStarted):
            main(["abliterate", "--model", model, "--directions", "d.safetensors", "--out", "o", *extra])
        assert not (tmp_path / "o").exists()
