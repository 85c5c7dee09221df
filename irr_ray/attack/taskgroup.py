"""Stage 3 as a Ray task group: every model of a study attacked in parallel, one task per model.

Models: each sweep checkpoint ``<study>/checkpoints/<name>/`` (an HF directory with ``trial.json``
recording its ``mlflow_run_id``), plus the study's original (source / instruct) model as
``original`` and its base model as ``base`` when given. Each task runs
:func:`irr_ray.attack.run.attack_model` on the resources of ``attack.resources`` (1 GPU on a
cluster, CPUs here) and writes ``<study>/attacks/<name>/`` atomically.

* A failing task (a broken checkpoint, an OOM) is reported with its error; the others finish and
  keep their results. Worker crashes are retried by Ray (the attack resumes from its per-K progress).
* A rerun skips every model whose ``attack.json`` exists, and only logs what was not yet logged.
* The driver logs each result to MLflow as it arrives (one writer: SQLite-safe), see
  :mod:`irr_ray.tracking.attack_logging`. ``<study>/attacks/attack_all.json`` records the outcome.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.run import ATTACK_JSON, K0_JSON
from irr_ray.config import config_dict
from irr_ray.contracts import AttackDoc, K0Doc, ProfileDoc, ProfileEntry
from irr_ray.core.verdict import AttackOutcome, combine_verdicts
from irr_ray.errors import ConfigError
from irr_ray.study import StudyPaths
from irr_ray.utils.files import write_json_atomic

log = logging.getLogger(__name__)

ORIGINAL, BASE, TRIAL = "original", "base", "trial"
SUMMARY = "attack_all.json"


@dataclass(frozen=True)
class ModelSpec:
    """One model to attack: result directory name, model path, role, the trial's MLflow run."""

    name: str
    path: str
    role: str
    mlflow_run_id: str | None = None


@dataclass
class TaskGroupReport:
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> attack_rank, censored, …
    skipped: list[str] = field(default_factory=list)  # already had attack.json
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    logged: dict[str, str] = field(default_factory=dict)  # name -> MLflow run id
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


def _trial_run_id(ckpt: Path) -> str | None:
    try:
        trial = json.loads((ckpt / "trial.json").read_text())
    except (OSError, ValueError):
        return None  # a broken checkpoint fails in its task, with the loader's error
    run_id = trial.get("mlflow_run_id") if isinstance(trial, dict) else None
    return str(run_id) if run_id else None


def discover_models(paths: StudyPaths, source_model: str | None, base_model: str | None) -> list[ModelSpec]:
    """The study's checkpoints (sorted by name), then ``original`` and ``base`` when given."""
    specs = []
    if paths.checkpoints.is_dir():
        for ckpt in sorted(p for p in paths.checkpoints.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if ckpt.name in (ORIGINAL, BASE):
                raise ConfigError(f"{ckpt}: checkpoint names {ORIGINAL!r} and {BASE!r} are reserved for the "
                                  "study's reference models")
            specs.append(ModelSpec(ckpt.name, str(ckpt), TRIAL, _trial_run_id(ckpt)))
    for name, model in ((ORIGINAL, source_model), (BASE, base_model)):
        if model:
            local = Path(model).expanduser()
            specs.append(ModelSpec(name, str(local.resolve()) if local.exists() else model, name))
    return specs


def _source_task(source_model: str, data_dir: str, cfg: dict[str, Any], cache: str,
                 judge_model: str | None) -> dict[str, Any]:
    """The source model's K=0 baseline, once per study (a Ray task on the attack's resources),
    written where the ``original`` model's own attack picks it up as its K=0 evaluation."""
    logging.basicConfig(level=logging.INFO, format="[source] %(message)s", force=True)
    from irr_ray.attack.run import source_baseline

    return asdict(source_baseline(source_model, data_dir, AttackConfig.model_validate(cfg), Path(cache), judge_model))


def _attack_task(spec: dict[str, Any], data_dir: str, cfg: dict[str, Any], out_dir: str,
                 judge_model: str | None, source: dict[str, Any] | None) -> dict[str, Any]:
    """Body of one Ray task (module-level so Ray pickles it by reference)."""
    # A Ray worker process runs task after task: replace the log prefix each time (force=True).
    logging.basicConfig(level=logging.INFO, format=f"[{spec['name']}] %(message)s", force=True)
    from irr_ray.attack.run import SourceBaseline, attack_model

    doc = attack_model(spec["path"], data_dir, AttackConfig.model_validate(cfg), out_dir, judge_model=judge_model,
                       source=None if source is None else SourceBaseline(**source))
    return {"verdict": doc.verdict.verdict, "robust_k": doc.verdict.robust_k, "attack_rank": doc.attack_rank,
            "censored": doc.censored, "K": len(doc.curve) - 1, "stop_reason": doc.stop_reason,
            "k0_refusal_harmful": doc.curve[0].refusal_harmful,
            "k0_refusal_harmless": doc.curve[0].refusal_harmless}


def _suite_task(spec: dict[str, Any], attack: str, data_dir: str, cfg: dict[str, Any], out_dir: str,
                judge_model: str | None, source: dict[str, Any] | None, base_model: str | None,
                dim_dir: str | None, _after_dim: Any = None) -> dict[str, Any]:
    """Body of one (model, suite attack) Ray task; ``_after_dim`` is the model's dim task result
    (Ray runs this task only after it: the K=0 evaluation and directions are reused)."""
    logging.basicConfig(level=logging.INFO, format=f"[{spec['name']}:{attack}] %(message)s", force=True)
    from irr_ray.attack.run import SourceBaseline
    from irr_ray.attack.suite.runner import run_suite_attack

    doc = run_suite_attack(attack, spec["path"], data_dir, AttackConfig.model_validate(cfg), out_dir,
                           judge_model=judge_model, source=None if source is None else SourceBaseline(**source),
                           base_model=base_model, dim_dir=dim_dir)
    return {"verdict": doc.verdict.verdict, "decided_at": doc.verdict.decided_at_k,
            "min_refusal_harmful": min(r.refusal_harmful for r in doc.curve)}


def write_profile(paths: StudyPaths, spec: ModelSpec, suite: list[str]) -> ProfileDoc | None:
    """``attacks/<m>/profile.json`` once every attack of the suite has finished on the model."""
    docs = {}
    for attack in suite:
        f = paths.attack_dir(spec.name, attack) / ATTACK_JSON
        if not f.is_file():
            return None
        docs[attack] = AttackDoc.read(f)
    doc = build_profile(spec.path, docs)
    doc.write(paths.profile(spec.name))
    return doc


def build_profile(model: str, docs: dict[str, AttackDoc]) -> ProfileDoc:
    """The robustness profile of one model from its attacks' results (attack name -> ``attack.json``)."""
    entries = [ProfileEntry(attack=a, budget_axis=d.budget_axis, budget_max=d.k_max, verdict=d.verdict.verdict,
                            decided_at=d.verdict.decided_at_k,
                            budget_to_break=d.verdict.decided_at_k if d.verdict.verdict == "broken" else None,
                            min_refusal_harmful=min(r.refusal_harmful for r in d.curve), reason=d.verdict.reason)
               for a, d in docs.items()]
    verdict, strongest, reason = combine_verdicts(
        [AttackOutcome(e.attack, e.verdict, e.decided_at, e.budget_max, e.min_refusal_harmful) for e in entries])
    return ProfileDoc(model=model, attacks=entries, verdict=verdict, strongest=strongest, reason=reason)


def _task_name(spec: ModelSpec, attack: str) -> str:
    """``original`` for the dim attack (the study's historical name), ``original/rdo`` for the others."""
    return spec.name if attack == "dim" else f"{spec.name}/{attack}"


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError carries the task's exception
    first = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {first[0] if first else ''}".strip()


def _init_ray(address: str | None, num_cpus: int | None, gpu_per_task: float) -> None:
    import ray

    from irr_ray.runtime import ensure_ray, ray_address
    from irr_ray.train.config import RaySettings

    settings = RaySettings(address=address, num_cpus=num_cpus)
    ensure_ray(settings)
    if gpu_per_task > 0 and not ray_address(settings):
        have = ray.cluster_resources().get("GPU", 0)
        if have < gpu_per_task:
            raise ConfigError(f"attack.resources.gpu={gpu_per_task} but this Ray instance has {have} GPUs: "
                              "tasks would wait forever; set attack.resources.gpu=0 to run on CPUs")


def _remote(task: Any, cfg: AttackConfig) -> Any:
    """``ray.remote(task)``; with a vLLM engine in the task (generation or a WildGuard-format judge),
    one task per worker process (``max_calls=1``). vLLM keeps process-wide state (its distributed
    groups; on CPU the engine runs in the worker's own process) that one engine's shutdown tears down
    under the next: a reused worker then fails ("pipeline model parallel group is not initialized")."""
    import ray

    if cfg.generation.backend == "vllm" or cfg.judge.kind == "wildguard":
        return ray.remote(max_calls=1)(task)
    return ray.remote(task)


def _source_baseline(paths: StudyPaths, source_model: str, data: Path, cfg: AttackConfig, judge_model: str | None,
                     options: dict[str, Any]) -> dict[str, Any]:
    """The source (``original``) model's K=0 baseline: read from its finished attack, else evaluated
    once into its attack's progress directory, whose K=0 step thereby is not computed twice."""
    import ray

    from irr_ray.attack.run import SourceBaseline, progress_dir

    original = paths.attack_dir(ORIGINAL)
    if (original / ATTACK_JSON).is_file():
        return asdict(SourceBaseline.from_k0(source_model, K0Doc.read(original / K0_JSON)))
    log.info("attack-all: K=0 baseline of the source model %s", source_model)
    return ray.get(_remote(_source_task, cfg).options(**options, name="attack:source-k0").remote(
        source_model, str(data), config_dict(cfg), str(progress_dir(original) / K0_JSON), judge_model))


class _Tracker:
    """Logs finished attack directories to MLflow from the driver (see attack_logging)."""

    def __init__(self, uri: str | None, experiment: str | None, paths: StudyPaths, specs: list[ModelSpec]) -> None:
        self.uri = uri
        self.experiment = experiment
        self.paths = paths
        self.trial_runs = [s.mlflow_run_id for s in specs if s.mlflow_run_id]
        self._ids: tuple[str | None, str | None] | None = None

    def _parent_and_experiment(self) -> tuple[str | None, str | None]:
        if self._ids is None:
            from mlflow import MlflowClient

            from irr_ray.tracking.attack_logging import find_study_parent
            from irr_ray.tracking.mlflow_utils import get_or_create_experiment

            parent, exp_id = find_study_parent(MlflowClient(tracking_uri=self.uri), self.trial_runs)
            if exp_id is None:
                exp_id = get_or_create_experiment(self.experiment or self.paths.root.name, self.uri,
                                                  self.paths.mlflow_artifacts)
            self._ids = (parent, exp_id)
        return self._ids

    def log(self, spec: ModelSpec) -> str | None:
        if self.uri is None:
            return None
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from irr_ray.tracking.attack_logging import log_attack

        parent, exp_id = self._parent_and_experiment()
        run_id = spec.mlflow_run_id
        if run_id is not None:
            try:
                MlflowClient(tracking_uri=self.uri).get_run(run_id)
            except MlflowException:
                log.warning("%s: trial run %s not in %s; logging to a new run", spec.name, run_id, self.uri)
                run_id = None
        return log_attack(self.paths.attack_dir(spec.name), self.uri, role=spec.role, name=spec.name,
                          run_id=run_id, experiment_id=exp_id, parent_run_id=parent)


def run_attack_all(
    study_dir: str | Path,
    cfg: AttackConfig,
    *,
    source_model: str | None = None,
    base_model: str | None = None,
    data_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
) -> TaskGroupReport:
    """Attack every model of the study (module docstring). ``tracking_uri`` None: no MLflow."""
    import ray

    t0 = time.perf_counter()
    paths = StudyPaths.at(study_dir)
    data = Path(data_dir).resolve() if data_dir else paths.data
    specs = discover_models(paths, source_model, base_model)
    if not specs:
        raise ConfigError(f"nothing to attack in {paths.root}: no checkpoints/*/ and no source or base model "
                          "(pass --source-model / --base-model or set them in the study config)")
    report = TaskGroupReport()
    tracker = _Tracker(tracking_uri, experiment, paths, specs)
    judge_model = source_model  # every model judged with the source model's declared refusal phrases

    def record_logging(spec: ModelSpec) -> None:
        try:
            run_id = tracker.log(spec)
            if run_id:
                report.logged[spec.name] = run_id
        except Exception as exc:  # a tracking problem must not lose the result on disk
            log.error("%s: MLflow logging failed: %s", spec.name, _error_text(exc))
            report.failed[spec.name] = f"MLflow logging: {_error_text(exc)}"

    suite = list(cfg.suite)
    todo: list[tuple[ModelSpec, str]] = []
    for spec in specs:
        for attack in suite:
            if (paths.attack_dir(spec.name, attack) / ATTACK_JSON).is_file():
                report.skipped.append(_task_name(spec, attack))
            else:
                todo.append((spec, attack))
    remaining = {spec.name: sum(s.name == spec.name for s, _ in todo) for spec in specs}

    def model_done(spec: ModelSpec, ran: bool = True) -> None:
        """Every attack of ``spec`` has finished (or failed): its profile, then MLflow. ``ran``: some
        attack of it ran in this invocation (its suite verdict is then reported as finished)."""
        profile = write_profile(paths, spec, suite)
        if profile is not None and len(suite) > 1 and ran:
            report.finished.setdefault(spec.name, {}).update(
                {"suite_verdict": profile.verdict, "strongest": profile.strongest})
            log.info("%s: suite verdict %s (strongest: %s)", spec.name, profile.verdict, profile.strongest)
        if any((paths.attack_dir(spec.name, attack) / ATTACK_JSON).is_file() for attack in suite):
            record_logging(spec)

    for spec in specs:
        if remaining[spec.name] == 0:
            model_done(spec, ran=False)

    if todo:
        _init_ray(ray_address, ray_num_cpus, cfg.resources.gpu)
        options = {"num_cpus": cfg.resources.cpu, "num_gpus": cfg.resources.gpu,
                   "max_retries": cfg.resources.max_retries}
        source = None
        if source_model and any(spec.role == TRIAL for spec, _ in todo):  # trials are measured against it
            source = _source_baseline(paths, source_model, data, cfg, judge_model, options)
        dim_remote, suite_remote = _remote(_attack_task, cfg), _remote(_suite_task, cfg)
        pending: dict[Any, tuple[ModelSpec, str]] = {}
        dim_refs: dict[str, Any] = {}
        for spec, attack in sorted(todo, key=lambda t: t[1] != "dim"):  # dim first: the others wait on it
            src = source if spec.role == TRIAL else None
            name = _task_name(spec, attack)
            if attack == "dim":
                ref = dim_remote.options(**options, name=f"attack:{name}").remote(
                    asdict(spec), str(data), config_dict(cfg), str(paths.attack_dir(spec.name)), judge_model, src)
                dim_refs[spec.name] = ref
            else:
                dim_dir = str(paths.attack_dir(spec.name)) if "dim" in suite else None
                ref = suite_remote.options(**options, name=f"attack:{name}").remote(
                    asdict(spec), attack, str(data), config_dict(cfg), str(paths.attack_dir(spec.name, attack)),
                    judge_model, src, base_model, dim_dir, dim_refs.get(spec.name))
            pending[ref] = (spec, attack)
        log.info("attack-all: %d task(s) submitted, %d already finished", len(todo), len(report.skipped))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec, attack = pending.pop(done[0])
            name = _task_name(spec, attack)
            remaining[spec.name] -= 1
            try:
                result = ray.get(done[0])
            except Exception as exc:
                report.failed[name] = _error_text(exc)
                log.error("attack %s failed: %s", name, report.failed[name])
                log.debug("%s", traceback.format_exc())
            else:
                if attack == "dim":
                    report.finished.setdefault(spec.name, {}).update(result)
                else:
                    report.finished.setdefault(spec.name, {})[attack] = result
                log.info("attack %s finished: %s", name, result)
            if remaining[spec.name] == 0:
                model_done(spec)

    report.wall_s = time.perf_counter() - t0
    write_json_atomic(paths.attacks / SUMMARY, {**asdict(report), "models": [asdict(s) for s in specs]})
    return report
