"""``irr-ray reproduce``: run the grid's sub-studies one after another, resumably.

Layout under the root::

    grid.json                       ReproduceGrid, written before any sub-study runs
    organism-seed<s>/               an ordinary study (irr-ray ui --study / irr-ray report work on it)
    organism-seed<s>.done.json      written when that sub-study finished: its config hash and timings
    sentiment/                      the sentiment proof of concept (``sentiment:``), table.json

Resume: ``--resume`` against an existing root compares the reproduce config (minus which organism
seeds run: seeds may be run separately and are merged into ``grid.json``) with ``grid.json``'s and
refuses a change in one line; a sub-study whose ``.done.json`` has the same config hash is skipped;
an interrupted one is rerun through :func:`irr_ray.driver.run_resolved_study` with resume, whose
stages reuse what they finished (and refuse a changed ``config.yaml``). Without ``--resume`` an
existing root is refused. At the end the claims table is written by
``irr_ray.report.claims.write_claims(root)`` when that module exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import ReproduceGrid
from irr_ray.errors import IrrRayError
from irr_ray.reproduce.config import ReproduceConfig, load_reproduce
from irr_ray.reproduce.grid import GRID_JSON, Grid, build_grid, study_dir_name
from irr_ray.utils.files import write_json_atomic


@dataclass
class SubStudyRun:
    seed: int
    study_dir: Path
    seconds: float
    skipped: bool
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ReproduceResult:
    root: Path
    grid: ReproduceGrid
    runs: list[SubStudyRun]
    claims: str  # what the claims hook said


def _say(msg: str) -> None:
    print(msg, flush=True)


def done_path(root: Path, seed: int) -> Path:
    return root / f"{study_dir_name(seed)}.done.json"


def _without_seeds(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "organism_seeds"}


def _merged_grid(grid: ReproduceGrid, root: Path, resume: bool) -> ReproduceGrid:
    """``grid`` checked against (and merged with the organism seeds of) an existing ``grid.json``."""
    from irr_ray.driver import _differences

    path = root / GRID_JSON
    if not path.exists():
        return grid
    if not resume:
        raise IrrRayError(f"a reproduction study already exists at {root}: pass --resume to continue it, "
                          "or choose another --root")
    saved = ReproduceGrid.read(path)
    if stable_hash(_without_seeds(saved.config)) != stable_hash(_without_seeds(grid.config)):
        diff = ", ".join(_differences(_without_seeds(saved.config), _without_seeds(grid.config))[:6])
        raise IrrRayError(f"--resume with a different config than {path} (changed: {diff}); "
                          "use a new --root for a changed study")
    seeds = sorted(set(saved.organism_seeds) | set(grid.organism_seeds))
    config = {**grid.config, "organism_seeds": seeds}
    return grid.model_copy(update={"organism_seeds": seeds, "studies": {**saved.studies, **grid.studies},
                                   "config": config})


def _check_sub_studies(grid: Grid, root: Path, resume: bool) -> None:
    """Before anything is written: each sub-study directory is writable, its models are there (or
    built by it), and an existing one was started with the same config."""
    from irr_ray.driver import _differences
    from irr_ray.preflight import check_study_dir, check_study_models

    for seed, (cfg, study_dir) in grid.studies.items():
        check_study_dir(study_dir, f"sub-study directory (organism seed {seed})")
        check_study_models(cfg, cfg.stages)
        saved_path = study_dir / "config.yaml"
        if saved_path.is_file():
            if not resume:
                raise IrrRayError(f"a study already exists at {study_dir}: pass --resume to continue it")
            saved = yaml.safe_load(saved_path.read_text()) or {}
            if stable_hash(saved) != stable_hash(config_dict(cfg)):
                diff = ", ".join(_differences(saved, config_dict(cfg))[:6])
                raise IrrRayError(f"--resume with a different config than {saved_path} (changed: {diff}); "
                                  "use a new --root for a changed study")


def _finished(root: Path, seed: int, config_hash: str) -> bool:
    import json

    path = done_path(root, seed)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("config_hash") == config_hash
    except (OSError, ValueError):
        return False


SENTIMENT_DIR = "sentiment"


def run_sentiment(cfg: ReproduceConfig, root: Path, source: str) -> None:
    """The sentiment proof of concept (``irr-ray sentiment sweep``) into ``<root>/sentiment``:
    skipped when its table exists, resumed when its sweep was interrupted."""
    from irr_ray.reproduce.config import sentiment_study
    from irr_ray.sentiment.study import study_paths
    from irr_ray.sentiment.sweep import run_sentiment_sweep

    study = sentiment_study(cfg, source, str(root / SENTIMENT_DIR))
    paths = study_paths(study)
    if (paths.root / "table.json").is_file():
        _say(f"[reproduce] sentiment: finished before, skipped ({paths.root})")
        return
    _say(f"[reproduce] sentiment: running {paths.root}")
    t0 = time.perf_counter()
    run_sentiment_sweep(study, paths, resume=(paths.sweep / study.name).exists(), verbose=False)
    _say(f"[reproduce] sentiment: done in {time.perf_counter() - t0:.0f} s -> {paths.root / 'table.md'}")


def write_claims_table(root: Path) -> str:
    """The claims hook: ``irr_ray.report.claims.write_claims(root)`` (imported here, when it
    exists) writes ``claims.md`` / ``claims.json`` / ``report.md`` under the root; returns what to print."""
    try:
        from irr_ray.report.claims import write_claims
    except ModuleNotFoundError as exc:
        if exc.name not in ("irr_ray.report.claims", "irr_ray.report"):
            raise
        return "claims table: not available"
    except ImportError:  # the module is there without write_claims
        return "claims table: not available"
    text = write_claims(root)
    return f"{text.rstrip()}\n\nclaims table: {root / 'claims.md'}" if text else f"claims table: {root / 'claims.md'}"


def run_reproduce(config_path: str | Path, root: str | Path | None = None, overrides: Sequence[str] | None = None,
                  resume: bool = False, organism_seeds: Sequence[int] | None = None,
                  cwd: Path | None = None) -> ReproduceResult:
    """Run (or resume) the reproduction study of ``config_path``; see the module docstring."""
    from irr_ray.driver import run_resolved_study
    from irr_ray.errors import ConfigError
    from irr_ray.preflight import check_study_dir

    cwd = (cwd or Path.cwd()).resolve()
    cfg: ReproduceConfig = load_reproduce(config_path, overrides, organism_seeds)
    root_value = root or cfg.root
    if not root_value:
        raise ConfigError(f"no root directory: set `root` in {config_path} or pass --root")
    root_path = Path(root_value).expanduser()
    root_path = root_path if root_path.is_absolute() else (cwd / root_path).resolve()
    check_study_dir(root_path, "reproduction root")
    grid = build_grid(cfg, root_path, str(config_path), cwd)
    doc = _merged_grid(grid.doc, root_path, resume)
    _check_sub_studies(grid, root_path, resume)

    n_presets = len(doc.presets)
    _say(f"irr-ray reproduce: {cfg.name!r} in {root_path}" + (" (resume)" if resume else "")
         + f": organism seeds {list(cfg.organism_seeds)}, {n_presets} trained models + original + base each")
    root_path.mkdir(parents=True, exist_ok=True)
    doc.write(root_path / GRID_JSON)

    runs: list[SubStudyRun] = []
    for seed, (study, study_dir) in grid.studies.items():
        config_hash = stable_hash(config_dict(study))
        if _finished(root_path, seed, config_hash):
            runs.append(SubStudyRun(seed, study_dir, 0.0, skipped=True))
            _say(f"[reproduce] organism seed {seed}: finished before, skipped ({study_dir})")
            continue
        _say(f"[reproduce] organism seed {seed}: running {study_dir}")
        t0 = time.perf_counter()
        result = run_resolved_study(study, study_dir, resume=resume or study_dir.joinpath("config.yaml").is_file())
        seconds = time.perf_counter() - t0
        timings = {t.name: round(t.seconds, 1) for t in result.timings}
        write_json_atomic(done_path(root_path, seed), {"seed": seed, "study_dir": str(study_dir),
                                                       "config_hash": config_hash, "seconds": round(seconds, 1),
                                                       "timings": timings})
        runs.append(SubStudyRun(seed, study_dir, seconds, skipped=False, timings=timings))
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
        _say(f"[reproduce] organism seed {seed}: done in {seconds:.0f} s ({stages}) -> {study_dir}")
    if cfg.sentiment is not None:
        run_sentiment(cfg, root_path, str(config_path))
    claims = write_claims_table(root_path)
    _say(claims)
    return ReproduceResult(root_path, doc, runs, claims)
