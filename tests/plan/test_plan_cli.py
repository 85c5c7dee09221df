"""``irr-ray plan``: the paper's study on 8 GPUs prints every stage; counts follow the study config;
bad input is one line naming it and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from irr_ray.cli import main

ROOT = Path(__file__).resolve().parents[2]
PAPER = str(ROOT / "experiments" / "paper.yaml")
ORGANISM = str(ROOT / "experiments" / "organism.yaml")


def plan_json(capsys, *args: str) -> dict:
    assert main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_on_8_gpus_prints_every_stage() -> None:
    proc = subprocess.run([sys.executable, "-m", "irr_ray", "plan", PAPER, "--gpus", "8"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for stage in ("data", "sweep", "attack", "report", "total"):
        assert any(line.startswith(f"| {stage}") for line in out.splitlines()), stage
    assert "312 TFLOP/s peak × MFU 0.35" in out and "wall h on 8 GPUs" in out
    assert "Llama-3.2-1B" in out


def test_counts_come_from_the_study_config(capsys) -> None:
    base = plan_json(capsys, PAPER, "--gpus", "8")
    stages = {s["stage"]: s for s in base["stages"]}
    assert [s["stage"] for s in base["stages"]] == ["data", "sweep", "attack", "report"]
    assert base["assumptions"]["source_params"] == pytest.approx(1.236e9, rel=1e-3)
    assert base["assumptions"]["models_attacked"] == 16 + 2  # trials + original + base
    assert stages["sweep"]["parts"]["asha_expected_epochs"] == pytest.approx(8.5)
    assert stages["attack"]["parts"]["per_iteration_candidates"] == 12 * 5  # int(0.8·16) layers × 5 positions
    more = {s["stage"]: s for s in plan_json(capsys, PAPER, "--gpus", "8", "--set", "sweep.num_samples=32",
                                             "--set", "attack.k_max=8")["stages"]}
    assert more["sweep"]["tflop"] == pytest.approx(2 * stages["sweep"]["tflop"])
    assert more["attack"]["tflop"] < stages["attack"]["tflop"] * (34 / 18)  # 34 models, half the iterations
    # wall time: 16 trials on 8 GPUs = 2 waves; on 16 GPUs max_concurrent_trials (8) still caps it
    on16 = {s["stage"]: s for s in plan_json(capsys, PAPER, "--gpus", "16")["stages"]}
    assert on16["sweep"]["wall_hours"] == pytest.approx(stages["sweep"]["wall_hours"])
    on1 = {s["stage"]: s for s in plan_json(capsys, PAPER, "--gpus", "1")["stages"]}
    assert on1["sweep"]["wall_hours"] == pytest.approx(stages["sweep"]["gpu_hours"])
    # a faster GPU: every GPU-hour scales
    fast = {s["stage"]: s for s in plan_json(capsys, PAPER, "--tflops-per-gpu", "624")["stages"]}
    assert fast["sweep"]["gpu_hours"] == pytest.approx(stages["sweep"]["gpu_hours"] / 2)


def test_organism_plan_runs(capsys) -> None:
    plan = plan_json(capsys, ORGANISM, "--gpus", "2")
    stages = {s["stage"]: s for s in plan["stages"]}
    assert plan["assumptions"]["prompt_tokens"] == 20
    assert stages["data"]["parts"]["rows"] == 1200 and stages["data"]["parts"]["judge"] == 0  # substring judge
    assert stages["attack"]["parts"]["rdo"] > 0 and stages["attack"]["parts"]["finetune"] > 0


@pytest.mark.parametrize(("args", "named"), [
    (["plan", "no/such/study.yaml"], "no/such/study.yaml"),
    (["plan", PAPER, "--gpus", "0"], "--gpus"),
    (["plan", PAPER, "--mfu", "1.5"], "--mfu"),
    (["plan", PAPER, "--set", "source_model=nobody/unknown-model"], "nobody/unknown-model"),
])
def test_bad_input_is_one_line_exit_2(capsys, args: list[str], named: str) -> None:
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("irr-ray plan: error:") and named in err[0], err


def test_local_source_model_shape_comes_from_its_config(capsys, tmp_path: Path) -> None:
    """A local source model is counted from its own config.json, not the table."""
    from irr_ray.plan.shapes import LLAMA_3_2_1B

    model = tmp_path / "half-width"
    model.mkdir()
    config = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 16, "num_attention_heads": 16,
              "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 128256, "tie_word_embeddings": True}
    (model / "config.json").write_text(json.dumps(config))
    plan = plan_json(capsys, PAPER, "--set", f"source_model={model}")
    assert plan["assumptions"]["source_shape"]["hidden_size"] == 1024
    assert plan["assumptions"]["source_params"] < LLAMA_3_2_1B.params / 2


def test_unbuilt_organism_judge_is_planned_from_its_fixed_shape(capsys) -> None:
    """organism-vllm judges with the organism's WildGuard-format judge, planned before it is built."""
    plan = plan_json(capsys, str(ROOT / "experiments" / "organism-vllm.yaml"), "--gpus", "2")
    data = {s["stage"]: s for s in plan["stages"]}["data"]
    assert data["parts"]["judge"] > 0 and "organism judge" in data["counted"]
