"""The method's named conditions as partial :class:`~irr_ray.train.config.TrainConfig` overrides.

Values from the method's write-up (Llama-3.2-1B-Instruct on WildGuardMix): λ = 100, multi-layer
matching; sentence pool (last 1/3, random 1/3, mean 1/3) without KD; chat-template pool with
KD λ = 1, T = 1. ``kd_only`` (KD + LM loss, no matching) is the control that tells whether
matching matters. ``baseline`` is the source model itself: zero epochs, so ``irr-ray train``
exports it unchanged; sweeps never train it (the attack stage evaluates the original model).

``experiments/conditions/<name>.yaml`` hold the same values as files (a test keeps them equal).
"""

from __future__ import annotations

import copy
from typing import Any

from irr_ray.config import build_config, config_dict
from irr_ray.errors import ConfigError
from irr_ray.train.config import TrainConfig

SENTENCE_POOL = {"last_ratio": 0.3333, "random_ratio": 0.3333, "chat_ratio": 0.0}
CHAT_POOL = {"last_ratio": 0.0, "random_ratio": 0.0, "chat_ratio": 1.0}
NO_KD = {"kd_lambda": 0.0}
KD = {"kd_lambda": 1.0, "kd_T": 1.0}

CONDITIONS: dict[str, dict[str, Any]] = {
    "baseline": {"epochs": 0, "match": "none", "kd_lambda": 0.0},
    "l1": {"match": "mean", "mean_penalty": "l1", "lambda_mean": 100.0, "multi_layer": True,
           "readout": dict(SENTENCE_POOL), **NO_KD},
    "cov": {"match": "cov", "cov_penalty": "l2", "lambda_cov": 100.0, "multi_layer": True,
            "readout": dict(SENTENCE_POOL), **NO_KD},
    "l1_kd": {"match": "mean", "mean_penalty": "l1", "lambda_mean": 100.0, "multi_layer": True,
              "readout": dict(CHAT_POOL), **KD},
    "cov_kd": {"match": "cov", "cov_penalty": "l2", "lambda_cov": 100.0, "multi_layer": True,
               "readout": dict(CHAT_POOL), **KD},
    "kd_only": {"match": "none", "readout": dict(CHAT_POOL), **KD},
}

NO_FINETUNE = frozenset({"baseline"})


def all_presets(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Built-in conditions, overridden/extended by a study's ``sweep.presets``."""
    out = copy.deepcopy(CONDITIONS)
    out.update(copy.deepcopy(extra or {}))
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` (nested dicts merged, everything else replaced); new dict."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(base: dict[str, Any], name: str, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if name not in presets:
        raise ConfigError(f"unknown condition {name!r}; known: {', '.join(sorted(presets))}")
    return deep_merge(base, presets[name])


def resolve_train_config(
    base: dict[str, Any] | TrainConfig,
    sampled: dict[str, Any] | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
    source: str = "trial config",
) -> TrainConfig:
    """Trial config = base train settings ⊕ preset ``sampled["condition"]`` ⊕ the other sampled
    values (dotted paths). Validated; a bad combination is a :class:`ConfigError`."""
    data = config_dict(base) if isinstance(base, TrainConfig) else copy.deepcopy(base)
    sampled = dict(sampled or {})
    condition = sampled.pop("condition", None)
    if condition is not None:
        data = apply_preset(data, condition, presets if presets is not None else all_presets())
    for key, value in sampled.items():
        set_dotted(data, key, value)
    return build_config(TrainConfig, data, source)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"`` (sections created as needed)."""
    *sections, leaf = key.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"`{key}`: `{part}` is not a section")
    node[leaf] = value
