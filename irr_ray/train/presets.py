"""The named conditions as partial :class:`~irr_ray.train.config.TrainConfig` overrides.

The method's (Llama-3.2-1B-Instruct on WildGuardMix): λ = 100, multi-layer matching; sentence pool
(last 1/3, random 1/3, mean 1/3) without KD; chat-template pool with KD λ = 1, T = 1. ``kd_only``
(KD + LM loss, no matching) is the control that tells whether matching matters. ``baseline`` is
the source model itself: zero epochs, so ``irr-ray train`` exports it unchanged; sweeps never train
it (the attack stage evaluates the original model).

Defenses beyond the method (:mod:`irr_ray.train.defenses`), all with KD on the teacher's 16-token
greedy replies (:mod:`irr_ray.train.replies`) so that refusal under ablation is trained on the
teacher's whole refusal, not only its first token:

* ``kd_reply`` — ``kd_only`` + reply KD: the control of the two below (same targets, no ablation).
* ``refat`` — Refusal Feature Adversarial Training (Yu et al., "Robust LLM safeguarding via
  refusal feature adversarial training", ICLR 2025): each harmful example, with p = 0.5, also
  runs with the refusal direction ablated (every layer, every position) and is trained to give
  the teacher's refusal; the direction is re-estimated from the training activations every 4
  optimizer steps.
* ``random_ablation`` — DeepRefusal (Xie et al., "Beyond surface alignment: rebuilding LLMs safety
  mechanism via probabilistically ablating refusal direction", EMNLP Findings 2025): every harmful
  example also runs with the source model's refusal direction ablated at random layers
  (p = 0.5 each) and random positions of those layers (p = 0.5 each), the paper's best p.
* ``refat_both`` — ``refat`` with ablated copies of harmless examples too (p = 0.5), trained to
  keep the teacher's compliant reply (``refat_harmless_p``, not in the paper): harmful-only copies
  teach the shortcut "refusal component gone ⇒ refuse", which on the organism makes the ablation
  turn the model into one that refuses harmless prompts too (the in-training proxy's harmless
  refusal under ablation 0.93 with ``refat``, 0.001 with ``refat_both``).
* ``cov_kd_refat`` — ``cov_kd`` with ``refat`` on top: presets compose (the refat knobs beside the
  matching ones).

This module is the one place the conditions are defined: ``irr-ray train --condition NAME`` and
every sweep (``sweep.space.condition``, ``sweep.points_to_evaluate``) read them from here; a study
adds or overrides presets under ``sweep.presets``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from irr_ray.config import build_config, deep_merge
from irr_ray.errors import ConfigError
from irr_ray.train.config import TrainConfig

SENTENCE_POOL = {"last_ratio": 0.3333, "random_ratio": 0.3333, "chat_ratio": 0.0}
CHAT_POOL = {"last_ratio": 0.0, "random_ratio": 0.0, "chat_ratio": 1.0}
NO_KD = {"kd_lambda": 0.0}
KD = {"kd_lambda": 1.0, "kd_T": 1.0}
REPLY_KD = {"kd_reply_tokens": 16}
REFAT = {"ablation": "refat", "refat_p": 0.5, "refat_lambda": 1.0, "refat_interval": 4, "refat_directions": 1}
RANDOM_ABLATION = {"ablation": "random", "refat_p": 1.0, "refat_lambda": 1.0, "refat_interval": 0,
                   "refat_directions": 1, "random_p_layer": 0.5, "random_p_position": 0.5}

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
    "kd_reply": {"match": "none", "readout": dict(CHAT_POOL), **KD, **REPLY_KD},
    "refat": {"match": "none", "readout": dict(CHAT_POOL), **KD, **REPLY_KD, **REFAT},
    "refat_both": {"match": "none", "readout": dict(CHAT_POOL), **KD, **REPLY_KD, **REFAT, "refat_harmless_p": 0.5},
    "random_ablation": {"match": "none", "readout": dict(CHAT_POOL), **KD, **REPLY_KD, **RANDOM_ABLATION},
    "cov_kd_refat": {"match": "cov", "cov_penalty": "l2", "lambda_cov": 100.0, "multi_layer": True,
                     "readout": dict(CHAT_POOL), **KD, **REPLY_KD, **REFAT},
}

NO_FINETUNE = frozenset({"baseline"})


def all_presets(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Built-in conditions, overridden/extended by a study's ``sweep.presets``."""
    out = copy.deepcopy(CONDITIONS)
    out.update(copy.deepcopy(extra or {}))
    return out


__all__ = ["CONDITIONS", "NO_FINETUNE", "all_presets", "condition_configs", "deep_merge", "preset",
           "resolve_train_config"]


def preset(name: str, presets: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The partial train config of condition ``name`` (built-ins unless ``presets`` are given)."""
    presets = presets if presets is not None else CONDITIONS
    if name not in presets:
        raise ConfigError(f"unknown condition {name!r}; known: {', '.join(sorted(presets))}")
    return presets[name]


def condition_configs(base: TrainConfig, names: Iterable[str],
                      presets: dict[str, dict[str, Any]] | None = None) -> dict[str, TrainConfig]:
    """``{name: base ⊕ preset}``, typed and validated once (on the driver, not in every trial)."""
    return {name: base.with_knobs(preset(name, presets), source=f"condition {name!r}") for name in names}


def resolve_train_config(
    base: dict[str, Any] | TrainConfig,
    sampled: dict[str, Any] | None = None,
    presets: dict[str, dict[str, Any]] | None = None,
    source: str = "trial config",
) -> TrainConfig:
    """Base train settings ⊕ preset ``sampled["condition"]`` ⊕ the other sampled values (dotted
    paths), validated; a bad combination is a :class:`ConfigError`."""
    cfg = base if isinstance(base, TrainConfig) else build_config(TrainConfig, base, source)
    sampled = dict(sampled or {})
    condition = sampled.pop("condition", None)
    if condition is not None:
        cfg = cfg.with_knobs(preset(condition, presets if presets is not None else all_presets()), source)
    return cfg.with_knobs(sampled, source) if sampled else cfg
