"""Ctrl-C through the CLI: exit 130, one line on stderr, and state a rerun resumes from.

The data stage's own byte-identical resume after an interrupt is tested in tests/data; here the
driver (`irr-ray run`) and `attack-all` are interrupted in-process (the stages themselves stubbed,
no Ray), including an interrupt that a library turns into another error while unwinding (Ray
Data once raised `RuntimeError: release unlocked lock`)."""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import pytest

from irr_ray.cli import main
from tests.badinput.test_badinput import STUDY


@pytest.fixture
def stubbed_stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The driver's data and sweep stages as stubs that record their calls; no Ray."""
    import irr_ray.data.stage
    import irr_ray.driver
    import irr_ray.train.sweep

    calls: dict[str, list] = {"data": [], "sweep": [], "interrupt": []}

    def data_stage(cfg, out):
        calls["data"].append(out)
        if calls["interrupt"]:
            kind = calls["interrupt"].pop(0)
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                if kind == "lock":
                    raise RuntimeError("release unlocked lock") from None
                raise
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "train.parquet").write_bytes(b"stub")
        return Path(out)

    def sweep(cfg, study_dir, resume, data_dir):
        calls["sweep"].append(resume)
        return types.SimpleNamespace(trials=[])

    monkeypatch.setattr(irr_ray.driver, "ray_session", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(irr_ray.data.stage, "run_data_stage", data_stage)
    monkeypatch.setattr(irr_ray.train.sweep, "run_sweep", sweep)
    return calls


@pytest.mark.parametrize("kind", ["ctrl-c", "lock"])
def test_run_interrupted_in_data_stage_exits_130_and_resumes(kind: str, stubbed_stages: dict, inputs: dict,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = {k: str(v) for k, v in inputs.items()}
    (tmp_path / "study.yaml").write_text(STUDY.format(**ctx).replace("[data, sweep, attack, report]", "[data, sweep]"))
    stubbed_stages["interrupt"].append(kind)

    assert main(["run", "study.yaml"]) == 130
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["irr-ray run: interrupted (rerun with the same arguments to resume)"]
    assert "Traceback" not in out + err
    assert (tmp_path / "s" / "config.yaml").is_file() and not stubbed_stages["sweep"]  # resumable, nothing after

    assert main(["run", "study.yaml", "--resume"]) == 0
    assert len(stubbed_stages["data"]) == 2 and len(stubbed_stages["sweep"]) == 1
    assert (tmp_path / "s" / "data" / "train.parquet").read_bytes() == b"stub"


def test_attack_all_interrupted_exits_130(inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    import irr_ray.attack.taskgroup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(irr_ray.attack.taskgroup, "run_attack_all", interrupted)
    (tmp_path / "st").mkdir()
    code = main(["attack-all", "--study", str(tmp_path / "st"), "--data-dir", str(inputs["data"]),
                 "--source-model", str(inputs["good"])])
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == "irr-ray attack-all: interrupted (rerun with the same arguments to resume)"
