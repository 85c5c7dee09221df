"""The sweep's search space: a conditional (define-by-run) Optuna space from ``sweep.space``, and
the named presets as Optuna's first points.

Keys of ``sweep.space`` are dotted :class:`~irr_ray.train.config.TrainConfig` paths or
``condition`` (a choice of presets). A trial samples ``condition`` first, then only the knobs that
condition uses (:data:`USED_WHEN`): ``lambda_mean`` / ``mean_penalty`` only when it matches means,
``lambda_cov`` / ``cov_penalty`` only when it matches covariances, ``kd_T`` / ``kd_reply_tokens``
only when a term has the teacher as target (KD, or the refusal under ablation), the ``refat_*``
knobs (p, λ, interval, directions) only for an ablation defense (``refat``, ``random_ablation``,
``cov_kd_refat``), ``random_p_layer`` / ``random_p_position`` only for the random (DeepRefusal)
one. A trial's config is its condition's typed config with the sampled knobs applied
(:meth:`~irr_ray.train.config.TrainConfig.with_knobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from irr_ray.errors import ConfigError
from irr_ray.train.config import ParamSpec, SweepConfig, TrainConfig
from irr_ray.train.presets import NO_FINETUNE, condition_configs

CONDITION = "condition"
# knob -> (TrainConfig attribute, value it must have for the knob to matter)
USED_WHEN: dict[str, tuple[str, Any]] = {
    "lambda_mean": ("match", "mean"),
    "mean_penalty": ("match", "mean"),
    "lambda_cov": ("match", "cov"),
    "cov_penalty": ("match", "cov"),
    "kd_T": ("uses_teacher", True),
    "kd_reply_tokens": ("uses_teacher", True),
    "kd_reply_cache_mb": ("uses_reply_kd", True),
    "refat_p": ("uses_ablation", True),
    "refat_lambda": ("uses_ablation", True),
    "refat_harmless_p": ("uses_ablation", True),
    "refat_interval": ("uses_ablation", True),
    "refat_directions": ("uses_ablation", True),
    "refat_layers": ("uses_ablation", True),
    "refat_samples": ("uses_ablation", True),
    "random_p_layer": ("ablation", "random"),
    "random_p_position": ("ablation", "random"),
}
# knobs others depend on: sampled right after the condition
DRIVERS = ("match", "kd_lambda", "ablation", "kd_reply_tokens")


def knob_used(key: str, cfg: TrainConfig) -> bool:
    """Does ``key`` change the fine-tune ``cfg`` describes?"""
    if key not in USED_WHEN:
        return True
    attr, value = USED_WHEN[key]
    return getattr(cfg, attr) == value


def ordered_keys(space: dict[str, ParamSpec]) -> list[str]:
    """``condition``, then the knobs others depend on, then the rest in file order."""
    first = [k for k in (CONDITION, *DRIVERS) if k in space]
    return first + [k for k in space if k not in first]


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@dataclass(frozen=True)
class KnobSpace:
    """Optuna's define-by-run space (``OptunaSearch(space=KnobSpace(...))``): a module-level class
    so the searcher's state pickles with the experiment (``--resume``)."""

    space: dict[str, ParamSpec]
    base: TrainConfig
    conditions: dict[str, TrainConfig]

    def __call__(self, trial: Any) -> None:
        cfg = self.base
        for key in ordered_keys(self.space):
            spec = self.space[key]
            if key == CONDITION:
                cfg = self.conditions[trial.suggest_categorical(key, list(spec.values or []))]
            elif knob_used(key, cfg):
                value = _suggest(trial, key, spec)
                if key in DRIVERS:
                    cfg = cfg.with_knobs({key: value})


def _suggest(trial: Any, key: str, spec: ParamSpec) -> Any:
    if spec.type == "choice":
        return trial.suggest_categorical(key, list(spec.values or []))
    return trial.suggest_float(key, spec.low, spec.high, log=spec.type == "loguniform")


def sweep_conditions(sweep: SweepConfig, base: TrainConfig, presets: dict[str, dict[str, Any]]) -> dict[str, TrainConfig]:
    """Typed configs of every condition the sweep samples or starts from."""
    spec = sweep.space.get(CONDITION)
    names = list(dict.fromkeys([*(spec.values or [] if spec else []), *sweep.points_to_evaluate]))
    for name in names:
        if name in NO_FINETUNE:
            where = "sweep.points_to_evaluate" if name in sweep.points_to_evaluate else "sweep.space.condition"
            raise ConfigError(f"{where} lists {name!r}: the source model without fine-tuning (no fine-tune); "
                              "the attack stage evaluates it directly — remove it from the sweep")
        if name not in presets:
            raise ConfigError(f"unknown condition {name!r}; known: {', '.join(sorted(presets))}")
    return condition_configs(base, names, presets)


def preset_points(sweep: SweepConfig, base: TrainConfig, presets: dict[str, dict[str, Any]],
                  conditions: dict[str, TrainConfig] | None = None) -> list[dict[str, Any]]:
    """One Optuna starting point per name in ``points_to_evaluate``: ``condition`` = the name, and
    each searched knob the preset uses = the preset's value (which must lie in the space), or the
    base value (clipped into the space: the preset leaves that knob alone)."""
    conditions = conditions if conditions is not None else sweep_conditions(sweep, base, presets)
    points = []
    for name in sweep.points_to_evaluate:
        preset, cfg = presets[name], conditions[name]
        if CONDITION not in sweep.space:
            outside = [k for k in _flat_keys(preset) if k not in sweep.space and _get(base, k) != _get(cfg, k)]
            if outside:
                raise ConfigError(f"preset {name!r} sets {', '.join(outside)} which sweep.space does not search; "
                                  "add `condition` to sweep.space (a choice of presets) or search those keys")
        point: dict[str, Any] = {}
        for key in ordered_keys(sweep.space):
            spec = sweep.space[key]
            if key == CONDITION:
                if not spec.contains(name):
                    raise ConfigError(f"sweep.space.condition must list {name!r} to evaluate it first")
                point[key] = name
                continue
            if not knob_used(key, cfg):
                continue
            value = _get(cfg, key)
            if key in _flat_keys(preset):
                if not spec.contains(value):
                    raise ConfigError(f"preset {name!r} sets {key}={value!r}, outside sweep.space.{key}; widen the space")
            else:
                value = _clip(value, spec)
            point[key] = value
        points.append(point)
    return points


def _flat_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def _clip(value: Any, spec: ParamSpec) -> Any:
    if spec.contains(value):
        return value
    if spec.type == "choice":
        return (spec.values or [None])[0]
    if not isinstance(value, (int, float)):
        return spec.low
    return min(max(float(value), spec.low), spec.high)  # type: ignore[type-var]


def check_space(sweep: SweepConfig, base: TrainConfig, presets: dict[str, dict[str, Any]]) -> dict[str, TrainConfig]:
    """Every value the space can produce must give a valid TrainConfig (checked at the corners, for
    every condition it samples); returns the conditions' typed configs."""
    conditions = sweep_conditions(sweep, base, presets)
    starts = list(conditions.values()) if CONDITION in sweep.space else [base]
    for key, spec in sweep.space.items():
        if key == CONDITION:
            continue
        for value in (spec.values if spec.type == "choice" else [spec.low, spec.high]) or []:
            for cfg in starts:
                cfg.with_knobs({key: value}, source=f"sweep.space.{key}={value!r}")
    return conditions
