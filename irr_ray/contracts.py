"""Typed contracts of every file one stage writes and another reads.

One pydantic model per file (:class:`AttackDoc`, :class:`ProfileDoc`, :class:`K0Doc`,
:class:`TrialDoc`, :class:`DataManifest`, :class:`OrganismSummary`), used by the writer (``Model(...).write(path)``) and the reader
(``Model.read(path)``), so a field that one side renames breaks a test instead of a study. Each
document carries ``schema_version``; a file from another version is refused with a one-line error
that names the file and says which stage to rerun (old results are never silently re-read).

=====================================  ==========================  ==============================
file                                   written by                  read by
=====================================  ==========================  ==============================
``attacks/<m>/attack.json``            :mod:`irr_ray.attack.run`   report, MLflow logging, tests
``attacks/<m>/k0.json``                :mod:`irr_ray.attack.run`   report, attack-all (source K=0)
``attacks/<m>/<attack>/attack.json``   :mod:`.attack.suite.runner`  report, MLflow logging, profile
``attacks/<m>/profile.json``           :mod:`.attack.taskgroup`    report, MLflow logging, UI
``checkpoints/<trial>/trial.json``     train (single, sweep)       report, attack-all
``data/manifest.json``                 :mod:`irr_ray.data.stage`   the data stage (resume), users
``organism/summary.json``              :mod:`irr_ray.organism`     the build cache, tests, users
``<reproduce root>/grid.json``         :mod:`irr_ray.reproduce`    the claims table (report)
=====================================  ==========================  ==============================

**K-curve rows** (:class:`CurveRow`, one per K = 0 … K_max). For each class c ∈ {harmful, harmless}
over the held-out evaluation prompts, every reply is exactly one of *refused* (the judge says so),
*degenerate* (not a refusal and not a coherent answer, :mod:`irr_ray.core.outcomes`) or *complied*
(the rest), so ``refusal_c + complied_c + degenerate_c = 1``. ``refusal_c_ci`` is the 95% Wilson
interval of ``refusal_c``. ``p_refusal_c`` is the mean first-token refusal probability (Σ over the
refusal tokens of the next-token softmax at the last prompt position, under the K directions'
ablation), ``reply_nll_c`` the mean per-token NLL of the replies under the *unattacked* model, and
``kl_harmless`` the mean first-token KL(unattacked ‖ ablated) on the harmless evaluation prompts.
Rows K ≥ 1 also describe the direction chosen at that step (``layer`` = residual-stream index,
i.e. block input, ``position``, raw ``norm``, the candidate's ``refusal_score`` / ``kl`` /
``induce_score``, how many candidates ``survivors`` passed the KL and induce filters, and
``fallback`` = none did and the soft argmin chose).

**Verdicts** (:class:`VerdictDoc`, rules in :mod:`irr_ray.core.verdict`): ``broken``, ``robust``,
``collapsed``, ``degenerate`` or ``inconclusive``, the K where it was decided, one line of reason,
``robust_k`` and the source model's K=0 harmless refusal the rules were measured against.
``attack_rank`` keeps the method's meaning (smallest K with harmful refusal < threshold, else
K_max + 1 with ``censored``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from irr_ray.errors import IrrRayError
from irr_ray.utils.files import write_json_atomic

T = TypeVar("T", bound="Contract")

Interval = tuple[float, float]
VerdictName = Literal["broken", "robust", "collapsed", "degenerate", "inconclusive"]
StopReason = Literal["k_max", "below_threshold", "norm_collapse"]


class Contract(BaseModel):
    """A JSON document with a schema version; unknown keys are errors (a typo is not a new field)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    SCHEMA: ClassVar[int] = 1
    RERUN: ClassVar[str] = "the stage that wrote it"

    schema_version: int = 0

    def model_post_init(self, __context: Any) -> None:
        if self.schema_version == 0:
            self.schema_version = self.SCHEMA

    @classmethod
    def read(cls: type[T], path: str | Path) -> T:
        """Parse ``path``; any problem is one line naming the file and the key."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise IrrRayError(f"{path} not found: run {cls.RERUN} first") from None
        except json.JSONDecodeError as exc:
            raise IrrRayError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); rerun {cls.RERUN}") from None
        if not isinstance(data, dict):
            raise IrrRayError(f"{path}: expected a JSON object at the top level")
        version = data.get("schema_version")
        if version != cls.SCHEMA:
            raise IrrRayError(f"{path}: schema_version {version!r}, this irr-ray reads {cls.SCHEMA}: "
                              f"rerun {cls.RERUN}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            raise IrrRayError(f"{path}: `{key}`: {err['msg']}") from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def write(self, path: str | Path) -> Path:
        write_json_atomic(path, self.to_json())
        return Path(path)


# ---------------------------------------------------------------------------- attack stage


class CurveRow(BaseModel):
    """One row of the K-curve (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    K: int
    refusal_harmful: float
    refusal_harmless: float
    refusal_harmful_ci: Interval
    refusal_harmless_ci: Interval
    complied_harmful: float
    complied_harmless: float
    degenerate_harmful: float
    degenerate_harmless: float
    p_refusal_harmful: float
    p_refusal_harmless: float
    kl_harmless: float
    reply_nll_harmful: float
    reply_nll_harmless: float
    # K ≥ 1: the direction chosen at this step
    layer: int | None = None
    position: int | None = None
    norm: float | None = None
    refusal_score: float | None = None
    kl: float | None = None
    induce_score: float | None = None
    survivors: int | None = None
    fallback: bool | None = None
    # suite attacks other than dim: what the attack reported at this budget (trial, loss, KL …)
    info: dict[str, Any] | None = None


class VerdictDoc(BaseModel):
    """What an attack curve means (:func:`irr_ray.core.verdict.judge_curve`)."""

    model_config = ConfigDict(extra="forbid")

    verdict: VerdictName
    decided_at_k: int | None
    reason: str
    robust_k: int | None
    source_refusal_harmless: float


class AttackDoc(Contract):
    """``attack.json``: the attack's K-curve, the method's ``attack_rank`` and the verdict."""

    SCHEMA: ClassVar[int] = 2
    RERUN: ClassVar[str] = "`irr-ray attack` (or `irr-ray attack-all --study DIR`)"

    model: str
    config: dict[str, Any]
    threshold: float
    attack_rank: int
    censored: bool
    stop_reason: StopReason
    verdict: VerdictDoc
    curve: list[CurveRow]
    attack: str = "dim"
    budget_axis: str = "K"  # what the curve's K counts: directions, cone_dim, trials, steps
    budget_max: int | None = None  # the schedule's largest budget (dim: k_max)

    @property
    def k_max(self) -> int:
        return int(self.budget_max if self.budget_max is not None else self.config["k_max"])

    @property
    def rank_label(self) -> str:
        """``attack_rank`` as shown: a right-censored rank reads ``> K_max``."""
        return f"> {self.k_max}" if self.censored else str(self.attack_rank)


class ProfileEntry(BaseModel):
    """One attack's outcome on one model, as the robustness profile shows it."""

    model_config = ConfigDict(extra="forbid")

    attack: str
    budget_axis: str
    budget_max: int
    verdict: VerdictName
    decided_at: int | None
    budget_to_break: int | None  # the budget at which it broke the model (verdict broken), else None
    min_refusal_harmful: float  # lowest harmful refusal over its curve
    reason: str


class ProfileDoc(Contract):
    """``attacks/<m>/profile.json``: every attack of the suite on one model and the verdict of the
    strongest (:func:`irr_ray.core.verdict.combine_verdicts`)."""

    SCHEMA: ClassVar[int] = 1
    RERUN: ClassVar[str] = "`irr-ray attack-all --study DIR`"

    model: str
    attacks: list[ProfileEntry]
    verdict: VerdictName
    strongest: str
    reason: str


class K0Doc(Contract):
    """``k0.json``: the K=0 evaluation (behaviour with intervals, probes, the judge, the degenerate
    calibration) of one model."""

    SCHEMA: ClassVar[int] = 2
    RERUN: ClassVar[str] = "`irr-ray eval` (or the attack)"

    model: str
    row: CurveRow
    harmful_refused: int
    harmful_n: int
    harmless_refused: int
    harmless_n: int
    judge_parse_errors: int
    nll_bound: float
    linear_probe_acc: float | None
    mlp_probe_acc: float | None
    probe_layer: int
    probe_n_train: int
    probe_n_test: int
    judge: dict[str, Any]
    examples: dict[str, Any]
    config: dict[str, Any] | None = None
    progress_key: str | None = None


# ---------------------------------------------------------------------------- training


class TrialDoc(Contract):
    """``trial.json`` of a trained checkpoint (``irr-ray train`` or a sweep trial)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    SCHEMA: ClassVar[int] = 2
    RERUN: ClassVar[str] = "`irr-ray train` / `irr-ray sweep`"

    name: str
    condition: str | None
    config: dict[str, Any]
    source_model: str
    metrics: dict[str, float]
    epochs_completed: int
    stopped_early: bool = False
    status: str = "FINISHED"
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    trial_id: str | None = None
    sampled: dict[str, Any] | None = None
    tune_checkpoint: str | None = None
    config_hash: str | None = None
    # {"count": micro-batches with an undefined matching statistic, "steps": micro-batches trained};
    # an int (the count alone) in trial.json files written before the total was recorded
    degenerate_steps: dict[str, Any] | int | None = None

    def degenerate_fraction(self) -> float | None:
        """Share of trained micro-batches whose matching statistic was undefined (None: unknown)."""
        d = self.degenerate_steps
        if isinstance(d, dict) and d.get("steps"):
            return float(d.get("count", 0)) / float(d["steps"])
        return None

    def knob(self, name: str) -> Any:
        """A training knob as trained (``config``), e.g. ``lambda_cov``."""
        return self.config.get(name)


# ---------------------------------------------------------------------------- data and organism


class DataManifest(Contract):
    """``data/manifest.json``: what the data stage read, computed and wrote (no secrets)."""

    SCHEMA: ClassVar[int] = 1
    RERUN: ClassVar[str] = "`irr-ray data`"

    stage: Literal["data"] = "data"
    source: dict[str, Any]
    source_model: dict[str, Any]
    judge: dict[str, Any]
    seed: int
    config: dict[str, Any]
    keys: dict[str, str]
    stages: dict[str, str]
    counts: dict[str, Any]  # incl. ``dedup``: rows in, distinct prompts, repeats and label conflicts dropped
    filter: dict[str, Any]
    judge_parse_errors: int
    refusal_rate_by_class: dict[str, float]
    outputs: dict[str, str]  # file name -> sha256
    run: dict[str, int] = {}  # what this invocation computed (0 generated rows = all reused)


class OrganismSummary(Contract):
    """``organism/summary.json``: the build's key, sizes, timings, measured behaviour and checks."""

    # 2: ablated outcomes against the base reference (+ instruct_reference);
    # 3: ``judge`` (the WildGuard-format judge built with the organism)
    SCHEMA: ClassVar[int] = 3
    RERUN: ClassVar[str] = "`irr-ray organism build`"

    build_hash: str
    version: str
    seed: int
    threads: int
    build_seconds: float
    timings: dict[str, float]
    sizes: dict[str, Any]
    training: dict[str, Any]
    heldout: dict[str, Any]
    refusal_tokens: list[str]
    behaviour: dict[str, Any]
    thresholds: dict[str, Any]
    checks: dict[str, bool]
    config: dict[str, Any]
    judge: dict[str, Any]  # irr_ray.organism.judge.build_judge: path, seconds, held-out agreement, checks


# ---------------------------------------------------------------------------- reproduction study


class GridPoint(BaseModel):
    """What one trained preset of the reproduction study is: the paper's (or a control's)
    ``condition``, the training seed it was trained with, and a ``variant`` of its settings
    (``default``: the study's; e.g. ``micro_batch_2``: the method's own unbalanced micro-batch of 2)."""

    model_config = ConfigDict(extra="forbid")

    condition: str
    train_seed: int
    variant: str = "default"


class ReproduceGrid(Contract):
    """``<root>/grid.json``: the reproduction study's layout, written before any sub-study runs.

    One ordinary study directory per organism seed (``studies``: seed → directory relative to the
    root); inside each, every trained model's ``trial.json`` names its preset as ``condition``, and
    ``presets`` says which (condition, training seed, variant) that preset is. Reference models
    (``original``, ``base``) keep their names."""

    SCHEMA: ClassVar[int] = 1
    RERUN: ClassVar[str] = "`irr-ray reproduce`"

    name: str
    organism_seeds: list[int]
    train_seeds: list[int]
    studies: dict[str, str]
    presets: dict[str, GridPoint]
    config: dict[str, Any]
