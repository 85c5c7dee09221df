"""One tiny ``irr-ray reproduce`` end to end on the shipped ``experiments/reproduce.yaml``, shrunk
with ``--set``: organism seed 0 (the suite's cached build), training seed 0, one condition plus the
micro-batch-2 variant, the attack suite [dim] to K = 2 on small prompt sets, 1 epoch. Asserts the
sub-study holds exactly the grid's trials (each once, fully trained), ``grid.json`` is valid, the
variant's trial.json records a degenerate fraction of 1.0, and a second ``--resume`` run
recomputes nothing; a changed config on resume is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irr_ray.cli import main
from irr_ray.contracts import ReproduceGrid, TrialDoc

REPO = Path(__file__).resolve().parents[2]
REPRODUCE_YAML = REPO / "experiments" / "reproduce.yaml"
TINY = ["train_seeds=[0]", "conditions=[cov_kd]", "controls=[]", "sentiment=null",
        "study.data.max_samples=160", "study.train.epochs=1", "study.train.max_train_samples=48",
        "study.train.eval.n_per_class=8", "study.train.eval.attack_prompts=4", "study.train.eval.attack_k=1",
        "study.attack.suite=[dim]", "study.attack.k_max=2", "study.attack.extract_n=16", "study.attack.score_n=4",
        "study.attack.eval_n=16", "study.attack.resources.max_retries=0"]


def _argv(root: Path, organism_dir: Path, *extra: str) -> list[str]:
    sets = [*TINY, f"organism_dir={organism_dir}", *extra]
    return ["reproduce", str(REPRODUCE_YAML), "--root", str(root), "--organism-seeds", "0", "--resume",
            *[a for s in sets for a in ("--set", s)]]


def _mtimes(study: Path) -> dict[str, float]:
    files = [*study.glob("checkpoints/*/trial.json"), *study.glob("attacks/*/attack.json"),
             *study.glob("attacks/*/*/attack.json"), study / "data" / "manifest.json"]
    return {str(p): p.stat().st_mtime_ns for p in files}


@pytest.mark.timeout(900, func_only=True)  # the shared organism build is a fixture (a worker may wait for it)
def test_tiny_reproduce_then_resume_recomputes_nothing(tmp_path: Path, organism_dir: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "reproduce"
    assert main(_argv(root, organism_dir)) == 0
    out = capsys.readouterr().out
    assert "[reproduce] organism seed 0: done in" in out

    grid = ReproduceGrid.read(root / "grid.json")
    assert list(grid.presets) == ["cov_kd_t0", "cov_kd_micro_batch_2_t0"]
    assert grid.organism_seeds == [0] and grid.train_seeds == [0] and grid.studies == {"0": "organism-seed0"}
    assert grid.presets["cov_kd_micro_batch_2_t0"].variant == "micro_batch_2"

    study = root / "organism-seed0"
    trials = {TrialDoc.read(p).condition: TrialDoc.read(p) for p in study.glob("checkpoints/*/trial.json")}
    assert sorted(trials) == sorted(grid.presets)  # every grid point once, nothing sampled beside them
    assert all(t.epochs_completed == 1 and not t.stopped_early for t in trials.values())
    mb2, balanced = trials["cov_kd_micro_batch_2_t0"], trials["cov_kd_t0"]
    assert (mb2.config["micro_batch"], mb2.config["batching"], mb2.config["seed"]) == (2, "shuffled", 0)
    assert mb2.degenerate_fraction() == 1.0 and balanced.degenerate_fraction() == 0.0
    attacked = {p.parent.name for p in study.glob("attacks/*/attack.json")}
    assert {"original", "base"} <= attacked and len(attacked) == 4, attacked
    assert (study / "report.md").is_file()
    done = json.loads((root / "organism-seed0.done.json").read_text())
    assert done["seed"] == 0 and set(done["timings"]) == {"organism", "data", "sweep", "attack", "report"}

    before = _mtimes(study)
    assert main(_argv(root, organism_dir)) == 0
    out = capsys.readouterr().out
    assert "organism seed 0: finished before, skipped" in out and "claims table:" in out
    assert _mtimes(study) == before

    # an interrupted sub-study (no .done.json) resumes through the driver: every stage reuses its results
    (root / "organism-seed0.done.json").unlink()
    assert main(_argv(root, organism_dir)) == 0
    out = capsys.readouterr().out
    assert "0 attacked, 4 reused" in out and "organism seed 0: done in" in out
    manifest = study / "data" / "manifest.json"  # rewritten by the data stage with what this run computed
    assert json.loads(manifest.read_text())["run"]["generated_rows"] == 0
    assert {k: v for k, v in _mtimes(study).items() if k != str(manifest)} == \
        {k: v for k, v in before.items() if k != str(manifest)}

    # a changed config is refused in one line, nothing rerun
    assert main(_argv(root, organism_dir, "study.attack.k_max=3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different config" in err and "k_max" in err, err
