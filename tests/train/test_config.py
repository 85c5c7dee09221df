"""Train/sweep configs, the named conditions and how presets become Optuna starting points."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from irr_ray.config import build_config, load_config
from irr_ray.errors import ConfigError
from irr_ray.train.config import SweepConfig, TrainConfig, load_sweep_study
from irr_ray.train.presets import CONDITIONS, all_presets, resolve_train_config
from irr_ray.train.space import check_space, preset_points

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_methods_with_defined_statistics() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.effective_batch) == (2e-5, 0.01, 20, 128)
    assert cfg.micro_batch >= 4 and cfg.micro_batch % 2 == 0  # >= 2 per class: covariance defined
    assert cfg.multi_layer and cfg.dtype == "auto"


def test_degenerate_micro_batches_are_rejected() -> None:
    with pytest.raises(ConfigError, match="micro_batch must be even"):
        build_config(TrainConfig, {"micro_batch": 7})
    with pytest.raises(ConfigError, match="needs >= 2 samples per class"):
        build_config(TrainConfig, {"match": "cov", "micro_batch": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(TrainConfig, {"lambda_cvo": 1.0})
    with pytest.raises(ConfigError, match="must be <= 1"):
        build_config(TrainConfig, {"readout": {"last_ratio": 0.6, "chat_ratio": 0.6}})


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_condition_files_match_the_presets(name: str) -> None:
    path = REPO / "experiments" / "conditions" / f"{name}.yaml"
    assert yaml.safe_load(path.read_text()) == CONDITIONS[name]
    cfg = load_config(TrainConfig, path)  # every condition file is a valid train config
    assert cfg.micro_batch == TrainConfig().micro_batch


def test_presets_and_sampled_values_compose() -> None:
    cfg = resolve_train_config({"lr": 1e-3, "micro_batch": 8},
                               {"condition": "cov_kd", "lambda_cov": 12.5, "readout.random_fraction": 0.25})
    assert (cfg.match, cfg.cov_penalty, cfg.kd_lambda, cfg.kd_T) == ("cov", "l2", 1.0, 1.0)
    assert (cfg.lambda_cov, cfg.lr, cfg.readout.chat_ratio, cfg.readout.random_fraction) == (12.5, 1e-3, 1.0, 0.25)
    assert resolve_train_config({}, {"condition": "l1"}).readout.last_ratio == pytest.approx(0.3333)
    with pytest.raises(ConfigError, match="unknown condition 'cov_l3'"):
        resolve_train_config({}, {"condition": "cov_l3"})


def _sweep(**kw) -> SweepConfig:
    space = {"condition": {"type": "choice", "values": ["l1", "cov_kd", "kd_only"]},
             "lambda_cov": {"type": "loguniform", "low": 1.0, "high": 50.0},
             "kd_T": {"type": "uniform", "low": 0.5, "high": 4.0}}
    return build_config(SweepConfig, {"space": space, **kw})


def test_preset_points() -> None:
    base = TrainConfig(model="m")
    presets = all_presets()
    sweep = _sweep(points_to_evaluate=["l1", "kd_only"])
    points = preset_points(sweep, base, presets)
    # l1 leaves lambda_cov alone: the base value 100 is clipped into the space.
    assert points == [{"condition": "l1", "lambda_cov": 50.0, "kd_T": 1.0},
                      {"condition": "kd_only", "lambda_cov": 50.0, "kd_T": 1.0}]
    with pytest.raises(ConfigError, match="outside sweep.space.lambda_cov"):
        preset_points(_sweep(points_to_evaluate=["cov_kd"]), base, presets)  # sets lambda_cov=100
    with pytest.raises(ConfigError, match="no fine-tune|without fine-tuning"):
        preset_points(_sweep(points_to_evaluate=["baseline"]), base, presets)
    no_condition = build_config(SweepConfig, {"space": {"lambda_cov": {"type": "loguniform", "low": 1, "high": 500}},
                                              "points_to_evaluate": ["cov_kd"]})
    with pytest.raises(ConfigError, match="add `condition` to sweep.space"):
        preset_points(no_condition, base, presets)


def test_space_is_validated() -> None:
    with pytest.raises(ConfigError, match="`lamda_cov` is not a train setting"):
        build_config(SweepConfig, {"space": {"lamda_cov": {"type": "uniform", "low": 0, "high": 1}}})
    with pytest.raises(ConfigError, match="loguniform needs low > 0"):
        build_config(SweepConfig, {"space": {"lambda_cov": {"type": "loguniform", "low": 0, "high": 1}}})
    bad = build_config(SweepConfig, {"space": {"condition": {"type": "choice", "values": ["baseline", "l1"]}}})
    with pytest.raises(ConfigError, match="lists 'baseline'"):
        check_space(bad, TrainConfig(model="m"), all_presets())
    odd = build_config(SweepConfig, {"space": {"micro_batch": {"type": "choice", "values": [8, 9]}}})
    with pytest.raises(ConfigError, match="micro_batch=9"):
        check_space(odd, TrainConfig(model="m"), all_presets())


def test_study_file_sections(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "source_model": "m", "data": {"anything": 1},
                                    "train": {"lr": 1e-4}, "sweep": {"num_samples": 3}}))
    study = load_sweep_study(path, ["sweep.max_concurrent_trials=4"])
    assert (study.train.lr, study.sweep.num_samples, study.sweep.max_concurrent_trials) == (1e-4, 3, 4)
    path.write_text(yaml.safe_dump({"train": {"lrr": 1e-4}}))
    with pytest.raises(ConfigError, match="train.lrr"):
        load_sweep_study(path)
    shipped = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))
    shipped += [p for p in (REPO / "experiments" / f"{n}.yaml" for n in ("organism", "paper")) if p.is_file()]
    for path in shipped:
        s = load_sweep_study(path)
        base = s.train.model_copy(update={"model": "m"})
        check_space(s.sweep, base, all_presets(s.sweep.presets))
        assert preset_points(s.sweep, base, all_presets(s.sweep.presets))
        assert base.micro_batch >= 4  # the shipped configs define both penalties on every batch
