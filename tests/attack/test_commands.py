"""The commands: ``irr-ray eval`` and ``irr-ray attack`` end to end, one-line errors on bad input
with nothing written, and an interrupted attack resuming without redoing finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.evaluate import make_evaluator
from irr_ray.attack.iterated import run_iterated_attack
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.attack.run import attack_model, model_identity_key
from irr_ray.cli import main
from irr_ray.contracts import K0Doc
from irr_ray.models.loading import load_model, load_tokenizer

TINY = ["eval_n=12", "extract_n=32", "score_n=8", "probe_train_n=16", "generation.max_new_tokens=8",
        "torch_threads=1"]


def test_eval_command_writes_k0(organism_dir: Path, study_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(organism_dir / "base"), "--data-dir", str(study_data), "--out", str(out)]
    assert main(args + [a for t in TINY for a in ("--set", t)]) == 0
    k0 = K0Doc.read(out / "k0.json")
    assert k0.harmful_n == k0.harmless_n == 12
    assert k0.linear_probe_acc is not None and k0.row.K == 0
    assert "harmful refusal" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--model": "MISSING"}, "does not exist"),
        ({"--data-dir": "MISSING"}, "train.parquet"),
        ({"--set": "k_maxx=2"}, "unknown key"),
        ({"--set": "kl_threshold=-1"}, "kl_threshold"),
        ({"--set": "threshold=1.5"}, "threshold"),
        ({"--set": "verdict.collapse_margin=1.5"}, "verdict.collapse_margin"),
        ({"--set": "degenerate.opener_min_prob=-0.1"}, "degenerate.opener_min_prob"),
    ],
)
def test_attack_command_rejects_bad_input(organism_dir: Path, study_data: Path, tmp_path: Path, capsys,
                                          change: dict[str, str], message: str) -> None:
    opts = {"--model": str(organism_dir / "instruct"), "--data-dir": str(study_data), "--out": str(tmp_path / "out"),
            "--k-max": "1", "--set": "eval_n=4"}
    opts.update({k: str(tmp_path / "missing") if v == "MISSING" else v for k, v in change.items()})
    assert main(["attack", *[x for kv in opts.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_interrupted_attack_resumes(organism_dir: Path, study_data: Path, tmp_path: Path) -> None:
    model_path = str(organism_dir / "instruct")
    cfg = AttackConfig.model_validate({"k_max": 2, "eval_n": 12, "extract_n": 32, "score_n": 8,
                                       "probe_train_n": 16, "generation": {"max_new_tokens": 8}, "torch_threads": 1})
    out = tmp_path / "attack"
    work = tmp_path / ".attack.progress"  # where attack_model keeps per-K progress for `out`
    model, tokenizer = load_model(model_path, device="cpu"), load_tokenizer(model_path)
    prompts = load_prompt_sets(study_data, cfg)
    evaluator, _ = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg)

    def stop_after_k1(row: dict) -> None:
        if row["K"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_iterated_attack(model, tokenizer, prompts, cfg, evaluator, work_dir=work,
                            model_key=model_identity_key(model_path), on_step=stop_after_k1)
    first = json.loads((work / "state.json").read_text())
    assert first["k"] == 1 and not out.exists()

    doc = attack_model(model_path, study_data, cfg, out)
    log = json.loads((out / "attack_log.json").read_text())
    assert [row.K for row in doc.curve][:2] == [0, 1] and log["stop_reason"] in ("k_max", "norm_collapse")
    assert [r.model_dump(mode="json", exclude_none=True) for r in doc.curve[:2]] == first["curve"]  # K = 0, 1 from progress …
    assert log["timings"][0] == first["timings"][0]  # … not recomputed
    assert not work.exists()  # progress removed once the result is written
    assert attack_model(model_path, study_data, cfg, out) == doc  # finished: a rerun only reads it
