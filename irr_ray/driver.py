"""``irr-ray run``: one study, five stages, one directory.

1. organism   build (or reuse, by content hash) the local model organism   [organism studies]
2. data       Ray Data: validate → filter → balance → generate → judge → split
3. sweep      Ray Tune: Optuna × ASHA over λ_mean / λ_cov / KD; MLflow parent + child runs
4. attack     Ray task group: K=0 evaluation + iterated ablation on every checkpoint, the
              original and the base model; K-curves to MLflow
5. report     table + Pareto plot (attack_rank vs K=0 refusal), Markdown and MLflow

Every stage skips what is already finished, so ``--resume`` after an interruption (or a killed
worker) completes the study without recomputing or losing finished results. The resolved config
is saved as ``<study>/config.yaml``; a resume with a different config is refused.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from irr_ray.config import config_dict, stable_hash
from irr_ray.errors import IrrRayError
from irr_ray.runtime import ray_session
from irr_ray.study import StudyPaths
from irr_ray.study_config import StudyConfig, load_study, resolve_study
from irr_ray.utils.files import write_text_atomic

# Stages that run on Ray: the first of them starts (or joins) it, for all of them.
RAY_STAGES = ("data", "sweep", "attack")


@dataclass
class StageTiming:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class StudyResult:
    study_dir: Path
    timings: list[StageTiming] = field(default_factory=list)
    report_text: str = ""
    failed_models: dict[str, str] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return sum(t.seconds for t in self.timings)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _check_or_save_config(cfg: StudyConfig, paths: StudyPaths, resume: bool) -> None:
    resolved = config_dict(cfg)
    if paths.config.is_file():
        if not resume:
            raise IrrRayError(f"a study already exists at {paths.root}: pass --resume to continue it, "
                              "or choose another --study-dir")
        saved = yaml.safe_load(paths.config.read_text()) or {}
        if stable_hash(saved) != stable_hash(resolved):
            diff = ", ".join(_differences(saved, resolved)[:6])
            raise IrrRayError(f"--resume with a different config than {paths.config} (changed: {diff}); "
                              "use a new --study-dir for a changed study")
        return
    write_text_atomic(paths.config, yaml.safe_dump(resolved, sort_keys=False))


def _stage_organism(cfg: StudyConfig, paths: StudyPaths) -> str:
    from irr_ray.organism import build_organism

    if cfg.organism is None or cfg.organism.dir is None:
        raise IrrRayError("the organism stage needs an `organism:` section in the study file")
    built = build_organism(cfg.organism.dir, seed=cfg.organism.seed)
    return f"{'reused' if built.from_cache else 'built'} {built.root} (hash {built.build_hash[:12]})"


def _stage_data(cfg: StudyConfig, paths: StudyPaths) -> str:
    from irr_ray.data.stage import run_data_stage

    out = run_data_stage(cfg.data, paths.data)
    return f"split in {out}"


def _stage_sweep(cfg: StudyConfig, paths: StudyPaths) -> str:
    from irr_ray.train.sweep import run_sweep

    resume = (paths.sweep / cfg.name).exists()
    outcome = run_sweep(cfg, study_dir=paths.root, resume=resume, data_dir=paths.data)
    return f"{len(outcome.trials)} trials, checkpoints in {paths.checkpoints}"


def _stage_attack(cfg: StudyConfig, paths: StudyPaths, result: StudyResult) -> str:
    from irr_ray.attack.taskgroup import run_attack_all
    from irr_ray.tracking.mlflow_utils import resolve_tracking_uri

    report = run_attack_all(
        paths.root, cfg.attack, source_model=cfg.source_model, base_model=cfg.base_model, data_dir=paths.data,
        tracking_uri=resolve_tracking_uri(cfg.tracking.uri, paths.root),
        experiment=cfg.tracking.experiment or cfg.name, ray_address=cfg.ray.address, ray_num_cpus=cfg.ray.num_cpus)
    failed = dict(report.failed)
    result.failed_models.update(failed)
    if failed:
        names = ", ".join(f"{k} ({v})" for k, v in failed.items())
        raise IrrRayError(f"attack failed for {len(failed)} model(s): {names}; "
                          "the others' results are kept — fix and rerun with --resume")
    return f"{len(report.finished)} attacked, {len(report.skipped)} reused"


def _stage_report(cfg: StudyConfig, paths: StudyPaths, result: StudyResult) -> str:
    from irr_ray.report import build_report
    from irr_ray.tracking.mlflow_utils import resolve_tracking_uri

    if not any(paths.attacks.glob("*/attack.json")):
        return "no attack results in this study yet: nothing to report"
    report = build_report(paths.root, tracking_uri=resolve_tracking_uri(cfg.tracking.uri, paths.root))
    result.report_text = report.render_text()
    return f"{report.markdown_path}"


def run_study(config_path: str | Path, study_dir: str | Path | None = None,
              overrides: list[str] | None = None, resume: bool = False) -> StudyResult:
    """Run (or resume) the study described by ``config_path``; see the module docstring."""
    cfg, root = resolve_study(load_study(config_path, overrides), study_dir)
    return run_resolved_study(cfg, root, resume=resume)


def run_resolved_study(cfg: StudyConfig, root: Path, resume: bool = False) -> StudyResult:
    """:func:`run_study` for a study config already loaded, checked (``check_study``) and resolved
    (``resolve_study``): what a study generated by another command (``irr-ray reproduce``) runs."""
    from irr_ray.preflight import check_study_dir, check_study_models

    check_study_dir(root)  # checks before any stage runs and before config.yaml is saved
    check_study_models(cfg, cfg.stages)
    paths = StudyPaths.at(root)
    _check_or_save_config(cfg, paths, resume)
    result = StudyResult(study_dir=paths.root)
    stages: list[tuple[str, str, Callable[[], str]]] = []
    if "organism" in cfg.stages and cfg.organism is not None:
        stages.append(("organism", f"build/reuse the model organism (seed {cfg.organism.seed})",
                       lambda: _stage_organism(cfg, paths)))
    if "data" in cfg.stages:
        g, j = cfg.data.generation, cfg.data.judge
        stages.append(("data", f"Ray Data: {g.backend} generation x{g.num_actors}, {j.kind} judge -> {paths.data}",
                       lambda: _stage_data(cfg, paths)))
    if "sweep" in cfg.stages:
        s = cfg.sweep
        stages.append(("sweep", f"Ray Tune: {s.num_samples} trials, Optuna x ASHA, "
                                f"{s.max_concurrent_trials} at a time -> {paths.sweep}",
                       lambda: _stage_sweep(cfg, paths)))
    if "attack" in cfg.stages:
        stages.append(("attack", f"Ray task group: K=0 eval + attack to K={cfg.attack.k_max} -> {paths.attacks}",
                       lambda: _stage_attack(cfg, paths, result)))
    if "report" in cfg.stages:
        stages.append(("report", f"table + Pareto plot -> {paths.report}",
                       lambda: _stage_report(cfg, paths, result)))

    _say(f"irr-ray run: study {cfg.name!r} in {paths.root}" + (" (resume)" if resume else ""))
    with contextlib.ExitStack() as stack:
        on_ray = False
        for i, (name, what, fn) in enumerate(stages, 1):
            _say(f"[{i}/{len(stages)}] {name}: {what}")
            if name in RAY_STAGES and not on_ray:
                on_ray = True
                stack.enter_context(ray_session(cfg.ray))  # shut down at the end if started here
            t0 = time.perf_counter()
            detail = fn()
            dt = time.perf_counter() - t0
            result.timings.append(StageTiming(name, dt, detail=detail))
            _say(f"[{i}/{len(stages)}] {name}: done in {dt:.1f} s — {detail}")
    return result
