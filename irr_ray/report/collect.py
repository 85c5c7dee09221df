"""Read a study's results into one row per attacked model.

Sources, each read through its contract model (:mod:`irr_ray.contracts`):

- ``attacks/<name>/attack.json`` (:class:`~irr_ray.contracts.AttackDoc`, required): the verdict,
  ``robust_k``, ``attack_rank`` / ``censored``, ``stop_reason``, ``threshold``, ``config`` and the
  ``curve`` whose ``K = 0`` row gives the unattacked refused / degenerate shares with the 95% Wilson
  intervals of refusal.
- ``attacks/<name>/k0.json`` (:class:`~irr_ray.contracts.K0Doc`, optional): the probe accuracies.
- ``checkpoints/<name>/trial.json`` (:class:`~irr_ray.contracts.TrialDoc`, sweep / train
  checkpoints only): the condition, the training knobs as trained (``config``: match, λ_mean,
  λ_cov, kd_T, kd_λ) and the trial's MLflow run id. Models without one (``original``, ``base``) are
  reference models and keep their directory name as condition.

A model directory without ``attack.json`` (an attack still running or failed) is listed as missing,
not an error; an ``attack.json`` that does not match its contract (or was written by another schema
version) is a one-line error naming the file and the key.

**Order.** Reference models first (``original``, ``instruct``, ``source``, ``base``, then others
by name), then the trials by verdict, most trustworthy robustness first — ``robust``,
``inconclusive`` (no evidence either way), ``broken`` (the honest crossing), ``degenerate`` (refusal
fell only because text broke), ``collapsed`` (over-refusal: useless however robust) — then by
``robust_k`` (larger first, none last), then by ``attack_rank`` (larger first), then by K=0 harmful
refusal (larger first) and name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irr_ray.contracts import AttackDoc, CurveRow, K0Doc, TrialDoc
from irr_ray.errors import IrrRayError
from irr_ray.study import StudyPaths

REFERENCE_ORDER = ("original", "instruct", "source", "base")
# trials: most trustworthy robustness first (module docstring)
VERDICT_ORDER = ("robust", "inconclusive", "broken", "degenerate", "collapsed")


@dataclass(frozen=True)
class ModelRow:
    """One attacked model: its training condition, K=0 behaviour, probes, verdict and attack rank."""

    name: str
    condition: str
    is_reference: bool
    refusal_harmful: float
    refusal_harmless: float
    refusal_harmful_ci: tuple[float, float] | None
    refusal_harmless_ci: tuple[float, float] | None
    attack_rank: int
    censored: bool
    k_max: int
    threshold: float | None
    verdict: str = "inconclusive"
    verdict_k: int | None = None
    verdict_reason: str = ""
    robust_k: int | None = None
    stop_reason: str | None = None
    degenerate_harmful: float = 0.0  # K=0 share of degenerate replies
    degenerate_harmless: float = 0.0
    match: str | None = None
    lambda_mean: float | None = None
    lambda_cov: float | None = None
    kd_T: float | None = None
    kd_lambda: float | None = None
    linear_probe_acc: float | None = None
    mlp_probe_acc: float | None = None
    mlflow_run_id: str | None = None
    curve: list[CurveRow] = field(default_factory=list, compare=False, repr=False)
    attack_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rank_label(self) -> str:
        """``attack_rank`` as shown: a right-censored rank reads ``> K_max``."""
        return f"> {self.k_max}" if self.censored else str(self.attack_rank)

    @property
    def verdict_label(self) -> str:
        """The verdict and the K it was decided at, e.g. ``broken (K=3)``; ``robust`` has no K."""
        return self.verdict if self.verdict_k is None else f"{self.verdict} (K={self.verdict_k})"

    @property
    def robust_k_label(self) -> str:
        return "none" if self.robust_k is None else str(self.robust_k)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _condition_label(name: str, trial: TrialDoc | None) -> str:
    if trial is None:
        return name
    if trial.condition:
        return trial.condition
    parts = []
    if trial.knob("match") not in (None, "none"):
        parts.append(str(trial.knob("match")))
    if (_number(trial.knob("kd_lambda")) or 0.0) > 0:
        parts.append("kd")
    return "+".join(parts) if parts else name


def read_model(paths: StudyPaths, name: str) -> ModelRow:
    """Row of one model from ``attacks/<name>/`` (+ ``k0.json``, ``checkpoints/<name>/trial.json``)."""
    attack_json = paths.attack_dir(name) / "attack.json"
    attack = AttackDoc.read(attack_json)
    k0 = next((r for r in attack.curve if r.K == 0), None)
    if k0 is None:
        raise IrrRayError(f"{attack_json}: `curve` has no row with K=0; rerun {AttackDoc.RERUN}")
    try:
        k_max = attack.k_max
    except (KeyError, TypeError, ValueError):
        raise IrrRayError(f"{attack_json}: `config.k_max` must be an integer; rerun {AttackDoc.RERUN}") from None
    k0_json = paths.attack_dir(name) / "k0.json"
    probes = K0Doc.read(k0_json) if k0_json.is_file() else None
    trial_json = paths.checkpoint_dir(name) / "trial.json"
    trial = TrialDoc.read(trial_json) if trial_json.is_file() else None

    # show only the knobs that act: λ_mean with mean matching, λ_cov with cov matching, T with KD on
    match = None if trial is None else trial.knob("match")
    kd_lambda = None if trial is None else _number(trial.knob("kd_lambda"))
    kd_on = (kd_lambda or 0.0) > 0

    def knob(key: str, shown: bool) -> float | None:
        return _number(trial.knob(key)) if trial is not None and shown else None

    verdict = attack.verdict
    return ModelRow(
        name=name,
        condition=_condition_label(name, trial),
        is_reference=trial is None,
        refusal_harmful=k0.refusal_harmful,
        refusal_harmless=k0.refusal_harmless,
        refusal_harmful_ci=tuple(k0.refusal_harmful_ci),
        refusal_harmless_ci=tuple(k0.refusal_harmless_ci),
        attack_rank=attack.attack_rank,
        censored=attack.censored,
        k_max=k_max,
        threshold=attack.threshold,
        verdict=verdict.verdict,
        verdict_k=verdict.decided_at_k,
        verdict_reason=verdict.reason,
        robust_k=verdict.robust_k,
        stop_reason=attack.stop_reason,
        degenerate_harmful=k0.degenerate_harmful,
        degenerate_harmless=k0.degenerate_harmless,
        match=None if match is None else str(match),
        lambda_mean=knob("lambda_mean", match in (None, "mean")),
        lambda_cov=knob("lambda_cov", match in (None, "cov")),
        kd_T=knob("kd_T", kd_on or kd_lambda is None),
        kd_lambda=kd_lambda,
        linear_probe_acc=None if probes is None else probes.linear_probe_acc,
        mlp_probe_acc=None if probes is None else probes.mlp_probe_acc,
        mlflow_run_id=None if trial is None else trial.mlflow_run_id,
        curve=list(attack.curve),
        attack_config=dict(attack.config),
    )


def _sort_key(row: ModelRow) -> tuple:
    if row.is_reference:
        ref = REFERENCE_ORDER.index(row.name) if row.name in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (0, ref, row.name)
    verdict = VERDICT_ORDER.index(row.verdict) if row.verdict in VERDICT_ORDER else len(VERDICT_ORDER)
    robust = -1 if row.robust_k is None else row.robust_k
    return (1, verdict, -robust, -row.attack_rank, -row.refusal_harmful, row.name)


def sort_rows(rows: list[ModelRow]) -> list[ModelRow]:
    """Reference models first, then trials by verdict, robust_k, attack_rank (module docstring)."""
    return sorted(rows, key=_sort_key)


def collect_rows(study_dir: str | Path) -> tuple[list[ModelRow], list[str]]:
    """All finished models of a study (reference models first, then trials by verdict) and the
    names of attack directories that have no ``attack.json`` yet."""
    paths = StudyPaths.at(study_dir)
    if not paths.root.is_dir():
        raise IrrRayError(f"study directory not found: {paths.root}")
    dirs = sorted(d for d in paths.attacks.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if paths.attacks.is_dir() else []
    finished = [d.name for d in dirs if (d / "attack.json").is_file()]
    missing = [d.name for d in dirs if not (d / "attack.json").is_file()]
    if not finished:
        raise IrrRayError(
            f"no attack results in {paths.attacks} yet (no attacks/<model>/attack.json): run "
            f"`irr-ray attack-all --study {paths.root}` or `irr-ray run ... --resume` first")
    return sort_rows([read_model(paths, name) for name in finished]), missing
