"""The reproduction study's own config (``experiments/reproduce.yaml``): which organism seeds,
training seeds, conditions, controls and variants, and the study every sub-study starts from.

``study:`` is either the path of a study file (relative to the reproduce file) or an inline study
mapping; either may ``extends:`` another study file (e.g. ``organism.yaml``), relative to the
reproduce file. It is read whole here — before ``--set`` overrides apply — so ``--set
study.attack.k_max=2`` reaches it and the resolved mapping is what ``grid.json`` records.

Everything is checked before anything is written: unknown condition names, reference models
listed as conditions, empty or repeated seeds, a variant of an unknown condition, a missing study
file — each one line naming the file and the key (:class:`~irr_ray.errors.ConfigError`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from irr_ray.config import StrictModel, apply_overrides, build_config, deep_merge, override_keys, read_yaml
from irr_ray.errors import ConfigError
from irr_ray.study_config import EXTENDS, read_study_file

# Models the attack stage of every study evaluates anyway: never trained, never a condition here.
REFERENCE_MODELS = ("original", "base", "baseline")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class VariantConfig(StrictModel):
    """One condition at settings other than the study's, e.g. the method's own micro-batch of 2
    (``train: {micro_batch: 2, batching: shuffled, grad_accum: 16}``)."""

    condition: str = Field(description="the condition (a preset name) the variant changes")
    train: dict[str, Any] = Field(default_factory=dict, description="train settings over the condition's preset")
    train_seeds: list[int] | None = Field(None, description="training seeds of the variant (default: all)")

    @field_validator("train_seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        return None if v is None else _distinct_seeds(v)


class ReproduceConfig(StrictModel):
    """What ``irr-ray reproduce`` runs (see :mod:`irr_ray.reproduce`)."""

    name: str = Field("reproduce", description="study name; sub-studies are <name>-organism-seed<s>")
    root: str | None = Field(None, description="where the sub-studies and grid.json land (relative to the cwd)")
    study: dict[str, Any] = Field(description="the study every sub-study starts from (file path or mapping)")
    organism_seeds: list[int] = Field(description="organism build seeds: one sub-study each")
    train_seeds: list[int] = Field(description="training seeds: every condition is trained once per seed")
    conditions: list[str] = Field(description="the method's conditions (built-in or study presets)")
    controls: list[str] = Field(default_factory=list, description="positive-control defenses, trained alike")
    variants: dict[str, VariantConfig] = Field(default_factory=dict, description="conditions at other settings")
    organism_dir: str | None = Field(
        None, description="where each organism is built/cached, with {seed} (relative to the cwd); "
                          "default: <sub-study>/organism")
    sentiment: dict[str, Any] | None = Field(
        None, description="the sentiment proof of concept (a sentiment study: file path or mapping with "
                          "`extends:`), run into <root>/sentiment after the sub-studies; none: not run")

    @field_validator("organism_seeds", "train_seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return _distinct_seeds(v)

    @field_validator("conditions")
    @classmethod
    def _some_conditions(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one condition")
        return v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        for name in v:
            if name == "default" or not NAME.match(name):
                raise ValueError(f"variant name {name!r}: use lower-case letters, digits and _, not 'default'")
        return v


def _distinct_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("list at least one seed")
    if len(set(v)) != len(v):
        raise ValueError(f"repeated seed in {v}")
    if any(s < 0 for s in v):
        raise ValueError(f"seeds must be >= 0, got {v}")
    return v


def read_study_section(value: Any, base_dir: Path, source: str, key: str = "study") -> dict[str, Any]:
    """``study:`` as a mapping: a file path read with its ``extends`` chain, or an inline mapping
    whose ``extends`` (relative to ``base_dir``) is resolved the same way."""
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"invalid config {source}: `{key}: {value}`: file not found ({path})")
        return read_study_file(path)
    if isinstance(value, dict):
        data = copy.deepcopy(value)
        parent = data.pop(EXTENDS, None)
        if parent is None:
            return data
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"invalid config {source}: `{key}.{EXTENDS}` must be the path of a study file")
        path = Path(parent).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"invalid config {source}: `{key}.{EXTENDS}: {parent}`: file not found ({path})")
        return deep_merge(read_study_file(path), data)
    raise ConfigError(f"invalid config {source}: `{key}` must be a study file path or a study mapping")


def load_reproduce(path: str | Path, overrides: Sequence[str] | None = None,
                   organism_seeds: Sequence[int] | None = None) -> ReproduceConfig:
    """The reproduce file with its study read in, ``--set`` overrides and ``--organism-seeds``
    applied, typed and checked (:func:`check_reproduce`)."""
    p = Path(path)
    source = str(p)
    data = read_yaml(p)
    if "study" not in data:
        raise ConfigError(f"invalid config {source}: `study`: missing (the study file every sub-study starts from)")
    data["study"] = read_study_section(data["study"], p.parent, source)
    if data.get("sentiment") is not None:
        data["sentiment"] = read_study_section(data["sentiment"], p.parent, source, key="sentiment")
    apply_overrides(data, list(overrides or []), f" ({source})")
    if organism_seeds is not None:
        data["organism_seeds"] = list(organism_seeds)
    cfg = build_config(ReproduceConfig, data, source, override_keys(list(overrides or [])))
    if cfg.sentiment is not None:
        sentiment_study(cfg, source)  # typed and checked now, before anything is written
    return check_reproduce(cfg, source)


def sentiment_study(cfg: ReproduceConfig, source: str = "<reproduce>", study_dir: str | None = None) -> Any:
    """The ``sentiment:`` section as a typed :class:`~irr_ray.sentiment.config.SentimentStudy`."""
    from irr_ray.sentiment.config import SentimentStudy

    data = copy.deepcopy(cfg.sentiment or {})
    if study_dir is not None:
        data["study_dir"] = study_dir
    return build_config(SentimentStudy, data, f"{source} (sentiment)")


def check_reproduce(cfg: ReproduceConfig, source: str) -> ReproduceConfig:
    """Names across sections: every condition, control and variant's condition is a known preset
    (built-in or the study's ``sweep.presets``) that trains; no name twice."""
    from irr_ray.train.presets import all_presets

    presets = all_presets((cfg.study.get("sweep") or {}).get("presets") or {})
    trainable = sorted(n for n, p in presets.items() if p.get("epochs", 1) != 0)
    named = [("conditions", n) for n in cfg.conditions] + [("controls", n) for n in cfg.controls]
    named += [(f"variants.{v}.condition", spec.condition) for v, spec in cfg.variants.items()]
    for key, name in named:
        if name in REFERENCE_MODELS:
            raise ConfigError(f"invalid config {source}: `{key}`: {name!r} is a reference model the attack stage "
                              "always evaluates (original, base); list only trained conditions")
        if name not in presets:
            raise ConfigError(f"invalid config {source}: `{key}`: unknown condition {name!r}; known: "
                              f"{', '.join(trainable)} (or add it under study.sweep.presets)")
    listed = cfg.conditions + cfg.controls
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
        raise ConfigError(f"invalid config {source}: `conditions`/`controls`: listed twice: {', '.join(twice)}")
    if cfg.organism_dir is not None and len(cfg.organism_seeds) > 1 and "{seed}" not in cfg.organism_dir:
        raise ConfigError(f"invalid config {source}: `organism_dir: {cfg.organism_dir}` needs {{seed}} with more "
                          "than one organism seed (each seed is its own build)")
    return cfg
