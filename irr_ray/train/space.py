"""The sweep's search space: Tune distributions from the YAML, and the named presets as Optuna's
first points.

Keys of ``sweep.space`` are dotted :class:`~irr_ray.train.config.TrainConfig` paths or
``condition`` (a choice of presets). A trial's config is base train settings ⊕ its condition's
preset ⊕ its other sampled values (:func:`irr_ray.train.presets.resolve_train_config`).
"""

from __future__ import annotations

from typing import Any

from irr_ray.config import config_dict
from irr_ray.errors import ConfigError
from irr_ray.train.config import ParamSpec, SweepConfig, TrainConfig
from irr_ray.train.presets import NO_FINETUNE, resolve_train_config


def search_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "loguniform":
            out[key] = tune.loguniform(spec.low, spec.high)
        elif spec.type == "uniform":
            out[key] = tune.uniform(spec.low, spec.high)
        else:
            out[key] = tune.choice(list(spec.values or []))
    return out


def _get_dotted(data: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _flat_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def preset_points(sweep: SweepConfig, base: TrainConfig, presets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One Optuna starting point per name in ``points_to_evaluate``: ``condition`` = the name, each
    searched key = the preset's value (which must lie in the space), or the base value (clipped
    into the space: the preset leaves that knob alone)."""
    base_dict = config_dict(base)
    points = []
    for name in sweep.points_to_evaluate:
        if name in NO_FINETUNE:
            raise ConfigError(f"sweep.points_to_evaluate: {name!r} is the source model without fine-tuning; "
                              "the attack stage evaluates it directly — remove it from the sweep")
        if name not in presets:
            raise ConfigError(f"sweep.points_to_evaluate: unknown preset {name!r}; known: {', '.join(sorted(presets))}")
        preset = presets[name]
        if "condition" not in sweep.space:
            outside = [k for k in _flat_keys(preset) if k not in sweep.space and _get_dotted(base_dict, k)[1] != _get_dotted(preset, k)[1]]
            if outside:
                raise ConfigError(f"preset {name!r} sets {', '.join(outside)} which sweep.space does not search; "
                                  "add `condition` to sweep.space (a choice of presets) or search those keys")
        point: dict[str, Any] = {}
        for key, spec in sweep.space.items():
            if key == "condition":
                if not spec.contains(name):
                    raise ConfigError(f"sweep.space.condition must list {name!r} to evaluate it first")
                point[key] = name
                continue
            found, value = _get_dotted(preset, key)
            if found:
                if not spec.contains(value):
                    raise ConfigError(f"preset {name!r} sets {key}={value!r}, outside sweep.space.{key}; widen the space")
            else:
                value = _clip(_get_dotted(base_dict, key)[1], spec)
            point[key] = value
        points.append(point)
    return points


def _clip(value: Any, spec: ParamSpec) -> Any:
    if spec.contains(value):
        return value
    if spec.type == "choice":
        return (spec.values or [None])[0]
    if not isinstance(value, (int, float)):
        return spec.low
    return min(max(float(value), spec.low), spec.high)  # type: ignore[type-var]


def check_space(sweep: SweepConfig, base: TrainConfig, presets: dict[str, dict[str, Any]]) -> None:
    """Every value the space can produce must give a valid TrainConfig (checked at the corners)."""
    for key, spec in sweep.space.items():
        values = spec.values if spec.type == "choice" else [spec.low, spec.high]
        for value in values or []:
            if key == "condition" and value in NO_FINETUNE:
                raise ConfigError(f"sweep.space.condition lists {value!r} (no fine-tune): remove it")
            resolve_train_config(base, {key: value}, presets, source=f"sweep.space.{key}={value!r}")
