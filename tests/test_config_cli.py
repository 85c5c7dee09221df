"""Typed config (unknown keys, overrides, one-line errors) and the CLI's error contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from irr_ray.attack.config import AttackConfig
from irr_ray.config import StrictModel, apply_overrides, load_config, stable_hash
from irr_ray.data.config import DataConfig
from irr_ray.errors import ConfigError
from irr_ray.study_config import load_section, load_study, resolve_study
from irr_ray.train.config import TrainConfig
from irr_ray.train.presets import preset

REPO = Path(__file__).resolve().parents[1]


class Inner(StrictModel):
    lr: float = 1e-3
    layers: list[int] = [1, 2]


class Outer(StrictModel):
    name: str = "x"
    inner: Inner = Inner()


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("name: a\ninner: {lr: 0.5}\n")
    cfg = load_config(Outer, f, ["inner.layers=[3, 4]", "name=b"])
    assert cfg.name == "b" and cfg.inner.lr == 0.5 and cfg.inner.layers == [3, 4]


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("inner: {lr: 0.5, lrr: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, f)
    msg = str(err.value)
    assert "inner.lrr" in msg and str(f) in msg and "unknown key" in msg and "\n" not in msg


def test_wrong_type_and_bad_override() -> None:
    with pytest.raises(ConfigError, match="inner.lr"):
        load_config(Outer, None, ["inner.lr=fast"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["inner.lr"])


def test_stable_hash_is_order_independent() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash(Outer()) != stable_hash(Outer(name="y"))


def test_shipped_study_files_validate_and_resolve(tmp_path: Path) -> None:
    shipped = sorted(p.name for p in (REPO / "experiments").glob("*.yaml"))
    # no copies of a study's sections (organism-vllm.yaml `extends` organism.yaml and names what it changes;
    # reproduce.yaml is `irr-ray reproduce`'s file, whose study `extends` organism.yaml too)
    assert shipped == ["organism-vllm.yaml", "organism.yaml", "paper.yaml", "reproduce.yaml", "sentiment.yaml"]
    from irr_ray.reproduce.config import load_reproduce

    reproduce = load_reproduce(REPO / "experiments" / "reproduce.yaml")
    assert reproduce.study["name"] == "organism" and reproduce.organism_seeds == [0, 1, 2]  # the grid: tests/reproduce
    paper = load_study(REPO / "experiments" / "paper.yaml")
    assert (paper.source_model, paper.sweep.num_samples, paper.attack.k_max) == \
        ("meta-llama/Llama-3.2-1B-Instruct", 16, 16)
    cfg, root = resolve_study(load_study(REPO / "experiments" / "organism.yaml"), tmp_path / "study")
    assert root == (tmp_path / "study").resolve()
    assert cfg.source_model == str(root / "organism" / "instruct")
    assert cfg.train.model == cfg.source_model and cfg.data.source_model == cfg.source_model
    with pytest.raises(ConfigError, match="sweep.nm_samples"):
        load_study(REPO / "experiments" / "organism.yaml", ["sweep.nm_samples=3"])
    vcfg, vroot = resolve_study(load_study(REPO / "experiments" / "organism-vllm.yaml"), tmp_path / "v")
    assert vcfg.name == "organism-vllm" and vcfg.sweep.space == cfg.sweep.space
    assert (vcfg.train.lr, vcfg.train.epochs, vcfg.sweep.num_samples) == (cfg.train.lr, cfg.train.epochs,
                                                                          cfg.sweep.num_samples)
    assert (vcfg.data.generation.backend, vcfg.attack.generation.backend) == ("vllm", "vllm")
    assert vcfg.data.judge.model == vcfg.attack.judge.model == str(vroot / "organism" / "judge")
    assert vcfg.attack.suite == cfg.attack.suite and vcfg.attack.resources.cpu == 2


def test_extends(tmp_path: Path) -> None:
    """`extends: FILE`: FILE's values, this file's on top (mappings merged, lists replaced); a
    missing file or a cycle is one line naming it; `{organism}` needs an organism section."""
    (tmp_path / "a.yaml").write_text("name: a\nsource_model: /m\nattack: {k_max: 9, suite: [dim, rdo]}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\nattack: {suite: [dim]}\n")
    b = load_study(tmp_path / "b.yaml")
    assert (b.name, b.source_model, b.attack.k_max, b.attack.suite) == ("b", "/m", 9, ["dim"])
    (tmp_path / "c.yaml").write_text("extends: c.yaml\nname: c\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_study(tmp_path / "c.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "d.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_study(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: a.yaml\ndata: {judge: {kind: wildguard, engine: vllm, "
                                     "model: '{organism}/judge'}}\n")
    with pytest.raises(ConfigError, match="data.judge.model.*organism"):
        resolve_study(load_study(tmp_path / "e.yaml"), tmp_path / "s")


def test_load_section_precedence(tmp_path: Path) -> None:
    """One loader for every command: defaults < study file section < layers < flags < --set."""
    study = tmp_path / "study.yaml"
    study.write_text("name: s\nsource_model: /m\ntrain: {lr: 0.5}\nattack: {k_max: 9, kl_threshold: 0.3}\n")
    attack = load_section(study, "attack", AttackConfig, {"k_max": 5, "implementation": None}, ["attack.eval_n=7"])
    assert (attack.k_max, attack.kl_threshold, attack.eval_n) == (5, 0.3, 7)
    assert load_section(study, "attack", AttackConfig, {"k_max": None}, ["k_max=2"]).k_max == 2
    train = load_section(study, "train", TrainConfig, {"model": None}, ["lambda_cov=3"], layers=[preset("cov")])
    assert (train.model, train.lr, train.match, train.lambda_cov) == ("/m", 0.5, "cov", 3.0)
    assert load_section(study, "train", TrainConfig, {"model": "/x"}).model == "/x"
    section_file = tmp_path / "attack.yaml"  # a file of the section's own keys
    section_file.write_text("k_max: 3\n")
    assert load_section(section_file, "attack", AttackConfig).k_max == 3
    assert load_section(None, "data", DataConfig, {"seed": 5}).seed == 5
    study.write_text("name: s\nattack: {k_max: 9}\ndata: {bogus: 1}\n")  # the whole study file is validated
    with pytest.raises(ConfigError, match="data.bogus"):
        load_section(study, "attack", AttackConfig)


def test_cli_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nunknown_section: {a: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "irr_ray", "run", str(bad), "--study-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown_section" in lines[0] and str(bad) in lines[0]
    assert not (tmp_path / "s").exists()


def test_cli_help_lists_every_stage() -> None:
    proc = subprocess.run([sys.executable, "-m", "irr_ray", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for cmd in ("organism", "data", "sweep", "attack-all", "run", "report", "ui", "bench"):
        assert cmd in proc.stdout
