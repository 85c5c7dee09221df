"""The reproduction grid: a :class:`~irr_ray.reproduce.config.ReproduceConfig` → one ordinary study
config per organism seed, and ``grid.json`` (:class:`~irr_ray.contracts.ReproduceGrid`).

Each sub-study is the base study with ``organism.seed = s`` and the sweep replaced by a fixed
grid: for every condition and control ``c`` and training seed ``t`` a preset ``{c}_t{t}`` = the
condition's preset ⊕ ``seed: t``; for every variant ``v`` of condition ``c`` a preset
``{c}_{v}_t{t}`` = that ⊕ the variant's ``train`` settings. The sweep samples nothing else:
``space = {condition: choice of those names}``, ``points_to_evaluate`` = all names (Optuna's
enqueued trials, consumed in order, each once), ``num_samples`` = their count and the ASHA grace
period = ``train.epochs`` (no rung below the last epoch: every point trains fully). A trial's
``trial.json`` then carries its preset name as ``condition``, and ``grid.json`` says which
(condition, training seed, variant) that name is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irr_ray.config import build_config, config_dict, deep_merge
from irr_ray.contracts import GridPoint, ReproduceGrid
from irr_ray.reproduce.config import ReproduceConfig
from irr_ray.study_config import StudyConfig, check_study, resolve_study
from irr_ray.train.presets import all_presets

GRID_JSON = "grid.json"
DEFAULT_VARIANT = "default"


def study_dir_name(seed: int) -> str:
    """The sub-study directory of organism seed ``seed``, relative to the root."""
    return f"organism-seed{seed}"


def preset_name(condition: str, train_seed: int, variant: str = DEFAULT_VARIANT) -> str:
    return f"{condition}_t{train_seed}" if variant == DEFAULT_VARIANT else f"{condition}_{variant}_t{train_seed}"


def grid_presets(cfg: ReproduceConfig) -> dict[str, tuple[GridPoint, dict[str, Any]]]:
    """``{preset name: (what it is, its partial train config)}`` in training order: conditions,
    controls, then variants, each over its training seeds."""
    base = all_presets((cfg.study.get("sweep") or {}).get("presets") or {})
    out: dict[str, tuple[GridPoint, dict[str, Any]]] = {}
    for condition in [*cfg.conditions, *cfg.controls]:
        for t in cfg.train_seeds:
            out[preset_name(condition, t)] = (GridPoint(condition=condition, train_seed=t),
                                              deep_merge(base[condition], {"seed": t}))
    for variant, spec in cfg.variants.items():
        for t in spec.train_seeds or cfg.train_seeds:
            name = preset_name(spec.condition, t, variant)
            if name in out:
                raise ValueError(f"preset {name!r} twice: rename variant {variant!r}")
            out[name] = (GridPoint(condition=spec.condition, train_seed=t, variant=variant),
                         deep_merge(deep_merge(base[spec.condition], {"seed": t}), spec.train))
    return out


def sub_study_dict(cfg: ReproduceConfig, seed: int, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base study as organism seed ``seed``'s study, with the fixed-grid sweep (module docstring)."""
    study = copy.deepcopy(cfg.study)
    name = f"{cfg.name}-{study_dir_name(seed)}"
    study["name"] = name
    study.pop("study_dir", None)
    study["tracking"] = {**(study.get("tracking") or {}), "experiment": name}
    organism: dict[str, Any] = {"seed": seed}
    if cfg.organism_dir is not None:
        organism["dir"] = cfg.organism_dir.replace("{seed}", str(seed))
    study["organism"] = organism
    epochs = int((study.get("train") or {}).get("epochs", StudyConfig().train.epochs))
    names = list(presets)
    sweep = dict(study.get("sweep") or {})
    sweep.update({
        "presets": {**(sweep.get("presets") or {}), **presets},
        "space": {"condition": {"type": "choice", "values": names}},
        "points_to_evaluate": names,
        "num_samples": len(names),
        "asha": {**(sweep.get("asha") or {}), "grace_period": max(1, epochs)},
    })
    study["sweep"] = sweep
    return study


@dataclass
class Grid:
    """The built grid: ``grid.json``'s document and each organism seed's resolved study."""

    doc: ReproduceGrid
    studies: dict[int, tuple[StudyConfig, Path]]


def build_grid(cfg: ReproduceConfig, root: Path, source: str = "<reproduce>", cwd: Path | None = None) -> Grid:
    """Every sub-study typed, checked (:func:`~irr_ray.study_config.check_study`: presets valid,
    points in the space) and resolved under ``root`` — nothing written."""
    from irr_ray.errors import ConfigError

    try:
        points = grid_presets(cfg)
    except ValueError as exc:
        raise ConfigError(f"invalid config {source}: `variants`: {exc}") from None
    presets = {name: train for name, (_, train) in points.items()}
    studies: dict[int, tuple[StudyConfig, Path]] = {}
    for seed in cfg.organism_seeds:
        where = f"{source} [study, organism seed {seed}]"
        study = check_study(build_config(StudyConfig, sub_study_dict(cfg, seed, presets), where), where)
        studies[seed] = resolve_study(study, root / study_dir_name(seed), cwd)
    doc = ReproduceGrid(name=cfg.name, organism_seeds=list(cfg.organism_seeds), train_seeds=list(cfg.train_seeds),
                        studies={str(s): study_dir_name(s) for s in cfg.organism_seeds},
                        presets={name: point for name, (point, _) in points.items()}, config=config_dict(cfg))
    return Grid(doc, studies)
