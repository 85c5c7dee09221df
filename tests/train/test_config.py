"""Train/sweep configs, the named conditions, the conditional search space and how presets become
Optuna starting points."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from irr_ray.config import build_config
from irr_ray.errors import ConfigError
from irr_ray.study_config import load_study
from irr_ray.train.config import SweepConfig, TrainConfig
from irr_ray.train.presets import CONDITIONS, all_presets, condition_configs, resolve_train_config
from irr_ray.train.space import KnobSpace, check_space, preset_points

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


def test_every_condition_is_a_valid_train_config() -> None:
    configs = condition_configs(TrainConfig(), CONDITIONS)
    assert set(configs) == {"baseline", "l1", "cov", "l1_kd", "cov_kd", "kd_only", "kd_reply", "refat",
                            "refat_both", "random_ablation", "cov_kd_refat"}
    assert (configs["cov_kd"].match, configs["cov_kd"].kd_lambda, configs["cov_kd"].readout.chat_ratio) == ("cov", 1.0, 1.0)
    assert configs["baseline"].epochs == 0 and configs["l1"].micro_batch == TrainConfig().micro_batch


def test_with_knobs_is_validated_and_leaves_the_original() -> None:
    base = TrainConfig(micro_batch=8)
    cfg = base.with_knobs({"lambda_cov": 3.0, "readout.chat_ratio": 0.2, "eval": {"attack_k": 1}})
    assert (cfg.lambda_cov, cfg.readout.chat_ratio, cfg.eval.attack_k) == (3.0, 0.2, 1)
    assert (base.lambda_cov, base.readout.chat_ratio, base.eval.attack_k) == (100.0, 0.0, 3)
    with pytest.raises(ConfigError, match="needs >= 2 samples per class"):
        base.with_knobs({"match": "cov", "micro_batch": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        base.with_knobs({"lambda_cvo": 1.0})


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
    return build_config(SweepConfig, {"space": kw.pop("space", space), **kw})


def test_space_samples_only_the_knobs_a_condition_uses() -> None:
    sweep = load_study(REPO / "experiments" / "paper.yaml").sweep  # condition, λ_mean, λ_cov, kd_T, kd_λ
    base = TrainConfig(model="m")
    presets = all_presets()
    space = KnobSpace(sweep.space, base, check_space(sweep, base, presets))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        space(trial)
        p = trial.params
        cfg = space.conditions[p["condition"]].with_knobs({k: v for k, v in p.items() if k != "condition"})
        assert ("lambda_mean" in p) == (cfg.match == "mean") and ("lambda_cov" in p) == (cfg.match == "cov")
        assert ("kd_T" in p) == cfg.uses_kd and "kd_lambda" in p
        seen.add(p["condition"])
        study.tell(trial, 0.0)
    assert seen == {"l1", "cov", "l1_kd", "cov_kd", "kd_only"}
    # the trial's config: its condition's typed config with the sampled knobs (what train_trial runs)
    point = preset_points(sweep, base, presets)[3]
    assert point == {"condition": "cov_kd", "kd_lambda": 1.0, "lambda_cov": 100.0, "kd_T": 1.0}
    assert resolve_train_config(base, point).lambda_cov == 100.0


def test_preset_points() -> None:
    base = TrainConfig(model="m")
    presets = all_presets()
    sweep = _sweep(points_to_evaluate=["l1", "kd_only"])
    points = preset_points(sweep, base, presets)
    # l1 matches means without KD: neither lambda_cov nor kd_T is part of its point; kd_only uses KD.
    assert points == [{"condition": "l1"}, {"condition": "kd_only", "kd_T": 1.0}]
    # cov_kd leaves kd_T at its value; lambda_cov=100 is outside [1, 50] (below)
    wide = _sweep(points_to_evaluate=["cov_kd"], space={
        "condition": {"type": "choice", "values": ["cov_kd"]},
        "lambda_cov": {"type": "loguniform", "low": 1.0, "high": 500.0},
        "lambda_mean": {"type": "loguniform", "low": 1.0, "high": 5.0}})
    assert preset_points(wide, base, presets) == [{"condition": "cov_kd", "lambda_cov": 100.0}]
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
    path.write_text(yaml.safe_dump({"name": "s", "source_model": "m", "attack": {"k_max": 4},
                                    "train": {"lr": 1e-4}, "sweep": {"num_samples": 3}}))
    study = load_study(path, ["sweep.max_concurrent_trials=4"])
    assert (study.train.lr, study.sweep.num_samples, study.sweep.max_concurrent_trials) == (1e-4, 3, 4)
    path.write_text(yaml.safe_dump({"train": {"lrr": 1e-4}}))
    with pytest.raises(ConfigError, match="train.lrr"):
        load_study(path)
    path.write_text(yaml.safe_dump({"data": {"anything": 1}}))  # one schema: no section is skipped
    with pytest.raises(ConfigError, match="data.anything"):
        load_study(path)
    for path in (REPO / "experiments" / "organism.yaml", REPO / "experiments" / "paper.yaml"):
        s = load_study(path)
        base = s.train.model_copy(update={"model": "m"})
        check_space(s.sweep, base, all_presets(s.sweep.presets))
        assert preset_points(s.sweep, base, all_presets(s.sweep.presets))
        assert base.micro_batch >= 4  # the shipped configs define both penalties on every batch


def test_defense_presets_compose() -> None:
    """refat / random_ablation / cov_kd_refat: the ablation knobs on top of KD (and matching)."""
    configs = condition_configs(TrainConfig(), CONDITIONS)
    refat, rand, both, reply = (configs[k] for k in ("refat", "random_ablation", "cov_kd_refat", "kd_reply"))
    assert (refat.ablation, refat.refat_p, refat.refat_interval, refat.kd_lambda, refat.match) == ("refat", 0.5, 4, 1.0,
                                                                                                 "none")
    assert (rand.ablation, rand.refat_interval, rand.random_p_layer, rand.random_p_position) == ("random", 0, 0.5, 0.5)
    assert (both.match, both.lambda_cov, both.ablation, both.refat_p) == ("cov", 100.0, "refat", 0.5)
    assert (refat.refat_harmless_p, configs["refat_both"].refat_harmless_p) == (0.0, 0.5)
    assert reply.uses_reply_kd and not reply.uses_ablation and all(c.uses_reply_kd for c in (refat, rand, both))
    assert not configs["kd_only"].uses_reply_kd and not configs["cov_kd"].uses_ablation
    cfg = resolve_train_config({"micro_batch": 8}, {"condition": "cov_kd", "ablation": "refat", "refat_p": 0.25})
    assert (cfg.match, cfg.ablation, cfg.refat_p) == ("cov", "refat", 0.25)  # sampled knobs compose too


def test_defense_knobs_are_range_checked() -> None:
    for bad, name in [({"refat_p": 1.5}, "refat_p"), ({"refat_interval": -1}, "refat_interval"),
                      ({"refat_directions": 0}, "refat_directions"), ({"ablation": "refatt"}, "ablation"),
                      ({"random_p_layer": -0.1}, "random_p_layer"), ({"kd_reply_tokens": -1}, "kd_reply_tokens"),
                      ({"refat_samples": 1}, "refat_samples")]:
        with pytest.raises(ConfigError, match=f"`{name}`"):
            TrainConfig().with_knobs(bad)
    with pytest.raises(ConfigError, match=r"refat_layers must be distinct residual indices >= 1.*\[0, 2\]"):
        TrainConfig().with_knobs({"refat_layers": [0, 2]})
    with pytest.raises(ConfigError, match="refat_directions=2 needs as many refat_layers"):
        TrainConfig().with_knobs({"refat_layers": [3], "refat_directions": 2})
    with pytest.raises(ConfigError, match="unknown condition 'refatt'"):
        resolve_train_config({}, {"condition": "refatt"})


def test_space_samples_defense_knobs_only_for_defenses() -> None:
    conditions = ["l1", "cov_kd", "kd_only", "kd_reply", "refat", "refat_both", "random_ablation", "cov_kd_refat"]
    sweep = build_config(SweepConfig, {"space": {
        "condition": {"type": "choice", "values": conditions},
        "lambda_cov": {"type": "loguniform", "low": 1.0, "high": 1000.0},
        "kd_T": {"type": "uniform", "low": 0.5, "high": 4.0},
        "kd_reply_tokens": {"type": "choice", "values": [0, 16]},
        "refat_p": {"type": "uniform", "low": 0.1, "high": 1.0},
        "refat_lambda": {"type": "loguniform", "low": 0.1, "high": 10.0},
        "refat_interval": {"type": "choice", "values": [0, 1, 4]},
        "refat_harmless_p": {"type": "uniform", "low": 0.0, "high": 0.5},
        "random_p_layer": {"type": "uniform", "low": 0.1, "high": 0.9},
        "random_p_position": {"type": "uniform", "low": 0.1, "high": 0.9}},
        "points_to_evaluate": ["refat", "random_ablation", "cov_kd_refat", "kd_reply"]})
    base = TrainConfig(model="m", micro_batch=8)
    presets = all_presets()
    space = KnobSpace(sweep.space, base, check_space(sweep, base, presets))
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(80):
        trial = study.ask()
        space(trial)
        p = trial.params
        cfg = space.conditions[p["condition"]].with_knobs({k: v for k, v in p.items() if k != "condition"})
        for knob in ("refat_p", "refat_lambda", "refat_interval", "refat_harmless_p"):
            assert (knob in p) == cfg.uses_ablation, (knob, p)
        for knob in ("random_p_layer", "random_p_position"):
            assert (knob in p) == (cfg.ablation == "random"), (knob, p)
        assert ("kd_T" in p) == ("kd_reply_tokens" in p) == cfg.uses_teacher
        assert ("lambda_cov" in p) == (cfg.match == "cov")
        seen.add(p["condition"])
        study.tell(trial, 0.0)
    assert seen == set(conditions)
    points = {pt["condition"]: pt for pt in preset_points(sweep, base, presets)}
    assert points["refat"] == {"condition": "refat", "kd_T": 1.0, "kd_reply_tokens": 16, "refat_p": 0.5,
                               "refat_lambda": 1.0, "refat_interval": 4, "refat_harmless_p": 0.0}
    assert points["random_ablation"]["random_p_layer"] == 0.5 and points["random_ablation"]["refat_interval"] == 0
    assert "refat_p" not in points["kd_reply"] and points["cov_kd_refat"]["lambda_cov"] == 100.0
