"""The reproduction grid (``irr_ray.reproduce``): config checks, the fixed-grid sub-studies and
one-line errors for bad input with nothing written. No Ray, no training: seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from irr_ray.cli import main
from irr_ray.errors import ConfigError
from irr_ray.reproduce.config import load_reproduce
from irr_ray.reproduce.grid import build_grid
from irr_ray.study_config import load_study
from irr_ray.train.presets import CONDITIONS

REPO = Path(__file__).resolve().parents[2]
REPRODUCE_YAML = REPO / "experiments" / "reproduce.yaml"


def test_the_shipped_grid_is_the_papers_conditions_seeds_controls_and_the_micro_batch_2_variant(tmp_path: Path) -> None:
    cfg = load_reproduce(REPRODUCE_YAML)
    assert (cfg.organism_seeds, cfg.train_seeds) == ([0, 1, 2], [0, 1])
    assert cfg.conditions == ["kd_only", "l1_kd", "cov_kd", "l1", "cov"] and cfg.controls == ["refat"]
    grid = build_grid(cfg, tmp_path / "root", str(REPRODUCE_YAML))
    names = [f"{c}_t{t}" for c in [*cfg.conditions, *cfg.controls] for t in (0, 1)] + ["cov_kd_micro_batch_2_t0"]
    assert list(grid.doc.presets) == names
    assert grid.doc.presets["cov_kd_micro_batch_2_t0"].model_dump() == {"condition": "cov_kd", "train_seed": 0,
                                                                        "variant": "micro_batch_2"}
    assert grid.doc.presets["l1_t1"].model_dump() == {"condition": "l1", "train_seed": 1, "variant": "default"}
    assert grid.doc.studies == {"0": "organism-seed0", "1": "organism-seed1", "2": "organism-seed2"}
    demo = load_study(REPO / "experiments" / "organism.yaml")
    for seed, (study, study_dir) in grid.studies.items():
        assert study_dir == tmp_path / "root" / f"organism-seed{seed}" and study.organism.seed == seed
        assert study.organism.dir == str(study_dir / "organism")
        s = study.sweep
        assert s.points_to_evaluate == names and s.num_samples == len(names)
        assert list(s.space) == ["condition"] and s.space["condition"].values == names
        assert s.asha.grace_period == study.train.epochs == demo.train.epochs  # no early stopping
        # the demo's data / train / attack settings, unchanged
        assert study.train.model_dump(exclude={"model"}) == demo.train.model_dump(exclude={"model"})
        assert study.attack.model_dump(exclude={"judge"}) == demo.attack.model_dump(exclude={"judge"})
        assert study.data.max_samples == demo.data.max_samples
        for name in names:
            point = grid.doc.presets[name]
            preset = s.presets[name]
            assert preset["seed"] == point.train_seed
            for key, value in CONDITIONS[point.condition].items():
                assert preset[key] == value
        assert s.presets["cov_kd_micro_batch_2_t0"] | {} == {**CONDITIONS["cov_kd"], "seed": 0, "micro_batch": 2,
                                                             "batching": "shuffled", "grad_accum": 16}


def _write(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(REPRODUCE_YAML.read_text())
    doc["study"] = {"extends": str(REPO / "experiments" / "organism.yaml")}
    doc["sentiment"] = {"extends": str(REPO / "experiments" / "sentiment.yaml"), "sweep": {"lambdas": [100]}}
    doc.update(changes)
    path = tmp_path / "reproduce.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("changes", "sets", "message"), [
    ({"conditions": ["kd_only", "cov_kdd"]}, [], "`conditions`: unknown condition 'cov_kdd'"),
    ({"controls": ["original"]}, [], "`controls`: 'original' is a reference model"),
    ({"train_seeds": []}, [], "`train_seeds`: Value error, list at least one seed"),
    ({}, ["organism_seeds=[]"], "`organism_seeds`: Value error, list at least one seed"),
    ({"organism_seeds": [0, 0]}, [], "repeated seed"),
    ({"conditions": []}, [], "`conditions`: Value error, list at least one condition"),
    ({"variants": {"mb2": {"condition": "nope"}}}, [], "`variants.mb2.condition`: unknown condition 'nope'"),
    ({"variants": {"mb2": {"condition": "cov_kd", "train": {"micro_batch": 2}}}}, [],
     "needs >= 2 samples per class"),
    ({"study": "missing.yaml"}, [], "`study: missing.yaml`: file not found"),
    ({"study": {"extends": "nowhere.yaml"}}, [], "`study.extends: nowhere.yaml`: file not found"),
    ({"conditions": ["l1", "l1"]}, [], "listed twice: l1"),
    ({}, ["colour=blue"], "`colour`: unknown key"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         changes: dict, sets: list[str], message: str) -> None:
    path = _write(tmp_path, **{k: v for k, v in changes.items() if k != "study"})
    if "study" in changes:
        doc = yaml.safe_load(path.read_text())
        doc["study"] = changes["study"]
        path.write_text(yaml.safe_dump(doc))
    root = tmp_path / "root"
    argv = ["reproduce", str(path), "--root", str(root)] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    where = f"--set {sets[0]}" if sets else str(path)  # the file, or the override that set the key
    assert len(err.splitlines()) == 1 and message in err and where in err, err
    assert not root.exists()


def test_bad_organism_seeds_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "root"
    assert main(["reproduce", str(REPRODUCE_YAML), "--root", str(root), "--organism-seeds", "0,x"]) == 2
    assert "--organism-seeds '0,x'" in capsys.readouterr().err
    assert not root.exists()


def test_missing_reproduce_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reproduce", str(tmp_path / "nope.yaml"), "--root", str(tmp_path / "root")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_organism_dir_needs_a_seed_placeholder_for_several_seeds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs \{seed\}"):
        load_reproduce(REPRODUCE_YAML, ["organism_dir=/tmp/organism"])
    cfg = load_reproduce(REPRODUCE_YAML, ["organism_dir=cache/org-{seed}"], organism_seeds=[1])
    (study, _), = build_grid(cfg, tmp_path, cwd=tmp_path).studies.values()
    assert study.organism.dir == str(tmp_path / "cache" / "org-1")


def test_resume_merges_organism_seeds_and_refuses_a_changed_grid(tmp_path: Path) -> None:
    from irr_ray.errors import IrrRayError
    from irr_ray.reproduce.runner import _merged_grid

    root = tmp_path / "root"
    first = build_grid(load_reproduce(REPRODUCE_YAML, organism_seeds=[0]), root).doc
    root.mkdir()
    first.write(root / "grid.json")
    later = build_grid(load_reproduce(REPRODUCE_YAML, organism_seeds=[2]), root).doc
    with pytest.raises(IrrRayError, match="pass --resume"):
        _merged_grid(later, root, resume=False)
    merged = _merged_grid(later, root, resume=True)
    assert merged.organism_seeds == [0, 2] and merged.config["organism_seeds"] == [0, 2]
    assert merged.studies == {"0": "organism-seed0", "2": "organism-seed2"}
    changed = build_grid(load_reproduce(REPRODUCE_YAML, ["train_seeds=[0]"], organism_seeds=[0]), root).doc
    with pytest.raises(IrrRayError, match=r"different config .* \(changed: train_seeds\)"):
        _merged_grid(changed, root, resume=True)


def test_the_shipped_sentiment_part_is_the_write_ups_lambda_on_the_local_set(tmp_path: Path) -> None:
    from irr_ray.reproduce.config import sentiment_study

    cfg = load_reproduce(REPRODUCE_YAML)
    study = sentiment_study(cfg, str(REPRODUCE_YAML), str(tmp_path / "sentiment"))
    assert study.sweep.lambdas == [100] and study.sweep.include_baseline and study.data.source == "local"
    assert study.study_dir == str(tmp_path / "sentiment")
    assert load_reproduce(REPRODUCE_YAML, ["sentiment=null"]).sentiment is None
    with pytest.raises(ConfigError, match=r"sentiment.*sweep"):
        load_reproduce(REPRODUCE_YAML, ["sentiment.sweep.lambdas=oops"])
