"""``attack-all`` with a suite on real Ray: one task per (model, attack), the suite attacks after
the model's dim attack (they reuse its K=0 row and directions), a profile per model naming the
strongest attack, MLflow tags per attack, and a rerun that does nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.taskgroup import run_attack_all
from irr_ray.cli import main
from irr_ray.contracts import AttackDoc, ProfileDoc
from irr_ray.study import StudyPaths
from tests.attack.conftest import SMALL_ATTACK


def test_suite_tasks_profiles_and_rerun(organism_dir, study_data, ray_local, tmp_path, capsys):
    paths = StudyPaths.at(tmp_path / "study")
    shutil.copytree(study_data, paths.data)
    instruct, base = Path(organism_dir) / "instruct", Path(organism_dir) / "base"
    cfg = AttackConfig.model_validate({**SMALL_ATTACK, "k_max": 1, "suite": ["dim", "orthogonalize"],
                                       "orthogonalize": {"budgets": [1]}, "stop_below_threshold": False})
    report = run_attack_all(paths.root, cfg, source_model=str(instruct), base_model=str(base))
    assert report.ok, report.failed
    for name in ("original", "base"):
        dim = AttackDoc.read(paths.attack_dir(name) / "attack.json")
        ortho = AttackDoc.read(paths.attack_dir(name, "orthogonalize") / "attack.json")
        assert ortho.attack == "orthogonalize" and ortho.budget_axis == "directions"
        assert ortho.curve[0] == dim.curve[0]  # K=0 reused from dim
        # the dim attack's direction is orthogonalised into the weights (with stop_below_threshold off the
        # base model, below the threshold at K=0, is attacked too; with it on, no attack runs on it at all:
        # tests/attack/suite/test_runner.py)
        assert ortho.curve[1].info["source"] == "dim"
        profile = ProfileDoc.read(paths.profile(name))
        assert [e.attack for e in profile.attacks] == ["dim", "orthogonalize"]
        assert profile.verdict == min((e.verdict for e in profile.attacks),
                                      key=("broken", "degenerate", "collapsed", "inconclusive", "robust").index)
        assert report.finished[name]["suite_verdict"] == profile.verdict
    original = ProfileDoc.read(paths.profile("original"))
    assert original.verdict == "broken" and original.strongest in ("dim", "orthogonalize")
    assert {e.attack: e.budget_to_break for e in original.attacks} == {"dim": 1, "orthogonalize": 1}

    again = run_attack_all(paths.root, cfg, source_model=str(instruct), base_model=str(base))
    assert again.ok and not again.finished
    assert sorted(again.skipped) == ["base", "base/orthogonalize", "original", "original/orthogonalize"]

    # a rerun after one suite attack was lost (the model's dim attack kept): only that attack runs, and
    # the CLI's summary line reports it (it used to fail on the missing dim numbers)
    shutil.rmtree(paths.attack_dir("original", "orthogonalize"))
    capsys.readouterr()
    sets = ["attack.suite=[dim,orthogonalize]", "attack.orthogonalize.budgets=[1]", "attack.stop_below_threshold=false",
            "attack.k_max=1", "attack.extract_n=64", "attack.score_n=32", "attack.eval_n=40",
            "attack.generation.max_new_tokens=12", "attack.torch_threads=1"]
    code = main(["attack-all", "--study", str(paths.root), "--source-model", str(instruct), "--base-model", str(base),
                 "--tracking-uri", "none", *[a for kv in sets for a in ("--set", kv)]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "orthogonalize broken" in out and "suite: broken" in out and "1 finished, 3 skipped" in out, out
