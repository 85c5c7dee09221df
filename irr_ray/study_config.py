"""The whole study in one typed config: the YAML users write (``experiments/<study>.yaml``).

Top-level sections, each owned by a stage::

    name, study_dir            where everything lands (see :mod:`irr_ray.study`)
    organism                   build the local model organism and use it as source/base/data
    source_model, base_model   HF directories or hub ids (the original instruct model, its base)
    ray, tracking              how to reach Ray; MLflow (sqlite under the study, env, or a server)
    data                       :class:`irr_ray.data.config.DataConfig`
    train, sweep               :class:`irr_ray.train.config.TrainConfig` / ``SweepConfig``
    attack                     :class:`irr_ray.attack.config.AttackConfig`
    stages                     which of organism/data/sweep/attack/report to run

A study file may start from another (``extends: organism.yaml``, relative to the file; see
:func:`read_study_file`) and name only what it changes. Unknown keys anywhere are errors.
``resolve_study`` fills the organism defaults and makes every
path absolute, and the result is saved as ``<study>/config.yaml`` — the file each stage command
(``irr-ray sweep``, ``attack-all``, ``report``) reads when pointed at the study.

:func:`load_section` is the one loader of every command: a study file's section (or a file of that
section's keys), the command's flags and ``--set`` overrides → the section's typed config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from irr_ray.attack.config import AttackConfig
from irr_ray.config import (
    StrictModel,
    apply_overrides,
    build_config,
    config_dict,
    deep_merge,
    override_keys,
    read_yaml,
)
from irr_ray.data.config import DataConfig
from irr_ray.errors import ConfigError
from irr_ray.train.config import RaySettings, SweepConfig, TrackingSettings, TrainConfig

Stage = Literal["organism", "data", "sweep", "attack", "report"]
ALL_STAGES: tuple[Stage, ...] = ("organism", "data", "sweep", "attack", "report")


class OrganismSettings(StrictModel):
    """The local model organism (tiny Llama chat model + WildGuardMix-shaped data)."""

    seed: int = Field(0, ge=0, description="organism build seed")
    dir: str | None = Field(None, description="where to build/cache it (default: <study>/organism)")


class StudyConfig(StrictModel):
    name: str = Field("study", description="study name; also the MLflow experiment unless tracking.experiment")
    study_dir: str | None = Field(None, description="study directory (relative to the working directory)")
    organism: OrganismSettings | None = Field(None, description="use the local model organism")
    source_model: str | None = Field(None, description="the original instruct model (source + KD teacher)")
    base_model: str | None = Field(None, description="its base model (attacked for comparison); optional")
    ray: RaySettings = Field(default_factory=RaySettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    stages: list[Stage] = Field(default_factory=lambda: list(ALL_STAGES), description="stages to run, in order")


T = TypeVar("T", bound=BaseModel)

# A section inherits a study-level value it leaves unset: (section, its key) <- study key.
INHERITED = {("train", "model"): "source_model", ("data", "source_model"): "source_model"}


def load_section(path: str | Path | None, section: str | None, cls: type[T],
                 flags: Mapping[str, Any] | None = None, overrides: Sequence[str] | None = None,
                 layers: Sequence[Mapping[str, Any]] = ()) -> T:
    """The typed config a command runs with. Precedence: ``cls`` defaults < the file < ``layers``
    (partial dicts merged in order, e.g. a condition preset) < ``flags`` (None = flag not given)
    < dotted ``overrides`` (``--set key=value``; a leading ``<section>.`` is optional).

    ``path`` is a study file (validated whole as :class:`StudyConfig`, the one schema of a study
    file; its ``section`` is used, with ``train.model`` / ``data.source_model`` defaulting to
    ``source_model``) or a file of ``cls`` keys; None: defaults. ``section=None``: the file *is* a
    ``cls`` (a whole study, an organism config).
    """
    data: dict[str, Any] = read_study_file(path) if path is not None else {}
    source = str(path) if path is not None else "<command line>"
    if section is not None and _is_study_file(data, section, cls):
        study = build_config(StudyConfig, data, source)
        data = config_dict(getattr(study, section))
        for (sec, key), study_key in INHERITED.items():
            if sec == section and data.get(key) is None and getattr(study, study_key) is not None:
                data[key] = getattr(study, study_key)
        source = f"{source} [{section}]"
    for layer in layers:
        data = deep_merge(data, dict(layer))
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    prefix = f"{section}." if section else None
    local = [o[len(prefix):] if prefix and o.startswith(prefix) else o for o in overrides or []]
    apply_overrides(data, local, f" ({source})")
    return build_config(cls, data, source, override_keys(local))


EXTENDS = "extends"
ORGANISM_PLACEHOLDER = "{organism}"


def read_study_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file with ``extends: FILE`` resolved: FILE (relative to this file; a study file
    or a file of the same keys, itself possibly extending another) is read first and this file's
    values are merged over it (nested mappings merged key by key, lists and scalars replaced) — so a
    variant of a study names only what it changes. A missing file or a cycle is one line naming it."""
    p = Path(path)
    data = read_yaml(p)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"invalid config {p}: `{EXTENDS}` must be the path of another config file")
    base = Path(parent).expanduser()
    base = base if base.is_absolute() else p.parent / base
    chain = (*_chain, p.resolve())
    if base.resolve() in chain:
        raise ConfigError(f"invalid config {p}: `{EXTENDS}: {parent}` is a cycle ({base} extends back to it)")
    if not base.is_file():
        raise ConfigError(f"invalid config {p}: `{EXTENDS}: {parent}`: file not found ({base})")
    return deep_merge(read_study_file(base, chain), data)


def _is_study_file(data: dict[str, Any], section: str, cls: type[BaseModel]) -> bool:
    """A study file has the section as a mapping, or a top-level key only a study has."""
    if isinstance(data.get(section), dict):
        return True
    return bool(set(data) & (set(StudyConfig.model_fields) - set(cls.model_fields)))


def load_study(path: str | Path, overrides: Sequence[str] | None = None) -> StudyConfig:
    """A study file with ``--set`` overrides (``sweep.num_samples=4``), checked whole
    (:func:`check_study`) before any stage runs or the config is saved."""
    return check_study(load_section(path, None, StudyConfig, overrides=overrides), str(path))


def check_study(cfg: StudyConfig, source: str = "<study>") -> StudyConfig:
    """Checks across sections that need no files: the sweep's condition names (``sweep.space.condition``,
    ``sweep.points_to_evaluate``) and its space at the corners; ``train.epochs ≥ 1`` when the study
    sweeps (0 epochs = the source model itself, the `baseline` condition, which the attack stage
    evaluates as `original` anyway; ``irr-ray train --set epochs=0`` still exports it)."""
    if "sweep" not in cfg.stages:
        return cfg
    if cfg.train.epochs < 1:
        raise ConfigError(f"invalid config {source}: `train.epochs`: 0 trains nothing, every trial would be the "
                          "source model (the `baseline` condition, attacked as `original` anyway); use epochs ≥ 1")
    from irr_ray.train.presets import all_presets
    from irr_ray.train.space import CONDITION, check_space, preset_points

    presets = all_presets(cfg.sweep.presets)
    named = [("sweep.points_to_evaluate", n) for n in cfg.sweep.points_to_evaluate]
    if CONDITION in cfg.sweep.space:
        named += [("sweep.space.condition", n) for n in cfg.sweep.space[CONDITION].values or []]
    for key, name in named:
        if name not in presets:
            raise ConfigError(f"invalid config {source}: `{key}`: unknown condition {name!r}; known: "
                              f"{', '.join(sorted(presets))} (or add it under sweep.presets)")
    try:
        preset_points(cfg.sweep, cfg.train, presets, check_space(cfg.sweep, cfg.train, presets))
    except ConfigError as exc:
        raise ConfigError(f"invalid config {source}: {exc}") from None
    return cfg


def _abs(value: str | None, base: Path) -> str | None:
    """Local paths made absolute (relative to ``base``); hub ids (``org/name`` that do not exist
    locally and do not start with . / ~) are left alone."""
    if value is None:
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if value.startswith((".", "~")) or (base / p).exists() or value.count("/") != 1:
        return str((base / p).resolve())
    return value


def resolve_study(cfg: StudyConfig, study_dir: str | Path | None, cwd: Path | None = None) -> tuple[StudyConfig, Path]:
    """Absolute study dir and paths; organism defaults for source/base model and data source."""
    cwd = (cwd or Path.cwd()).resolve()
    root_value = study_dir or cfg.study_dir
    if not root_value:
        raise ConfigError("no study directory: set `study_dir` in the study file or pass --study-dir")
    root = Path(root_value).expanduser()
    root = root if root.is_absolute() else (cwd / root).resolve()
    upd: dict = {"study_dir": str(root)}
    data_upd: dict = {}
    if cfg.organism is not None:
        org_dir = (cwd / Path(cfg.organism.dir).expanduser()).resolve() if cfg.organism.dir else root / "organism"
        upd["organism"] = cfg.organism.model_copy(update={"dir": str(org_dir)})
        upd["source_model"] = _abs(cfg.source_model, cwd) if cfg.source_model else str(org_dir / "instruct")
        upd["base_model"] = _abs(cfg.base_model, cwd) if cfg.base_model else str(org_dir / "base")
        if cfg.data.source is None:
            data_upd["source"] = str(org_dir / "data" / "wildguardmix.parquet")
    else:
        if not cfg.source_model:
            raise ConfigError("set `source_model` (or an `organism:` section) in the study file")
        upd["source_model"] = _abs(cfg.source_model, cwd)
        upd["base_model"] = _abs(cfg.base_model, cwd)
        if cfg.data.source and cfg.data.source != "allenai/wildguardmix":
            data_upd["source"] = _abs(cfg.data.source, cwd)
    if cfg.data.source_model is None:
        data_upd["source_model"] = upd["source_model"]
    # `{organism}` in a judge model path: the organism directory (its WildGuard-format judge is
    # <organism>/judge), whatever --study-dir / organism.dir say
    org = upd["organism"].dir if cfg.organism is not None else None
    for section, judge in (("data", cfg.data.judge), ("attack", cfg.attack.judge)):
        if ORGANISM_PLACEHOLDER not in judge.model:
            continue
        if org is None:
            raise ConfigError(f"`{section}.judge.model: {judge.model}` names the organism but the study has no "
                              "`organism:` section")
        model = str(Path(judge.model.replace(ORGANISM_PLACEHOLDER, org)).resolve())
        if section == "data":
            data_upd["judge"] = judge.model_copy(update={"model": model})
        else:
            upd["attack"] = cfg.attack.model_copy(update={"judge": judge.model_copy(update={"model": model})})
    if cfg.data.ray.address is None and cfg.ray.address is not None:
        data_upd["ray"] = cfg.data.ray.model_copy(update={"address": cfg.ray.address})
    if data_upd:
        upd["data"] = cfg.data.model_copy(update=data_upd)
    if cfg.train.model is None:
        upd["train"] = cfg.train.model_copy(update={"model": upd["source_model"]})
    return cfg.model_copy(update=upd), root
