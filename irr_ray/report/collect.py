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

- ``attacks/<name>/<attack>/attack.json`` (the other attacks of the suite, optional) and
  ``attacks/<name>/profile.json`` (:class:`~irr_ray.contracts.ProfileDoc`, written when every attack
  of the suite finished on the model): the **robustness profile**, one :class:`AttackEntry` per
  attack (verdict, the budget it was decided at, robust_k on its own budget axis), the combined
  verdict and the strongest attack (:func:`irr_ray.core.verdict.combine_verdicts`).

**Suite.** A study is reported as a suite when some model has a result of an attack other than
``dim``; then a model's ``verdict`` is the combined one (a model broken by any attack is broken),
``verdict_k`` the budget the strongest attack decided it at, ``verdict_reason`` the profile's
reason. Without ``profile.json`` (attacks still running), or when the study shows an attack the
model has no result of, the combined verdict is computed here over the attacks that finished and
the row is marked ``suite_partial``. ``robust_k``, ``attack_rank`` and the K=0 columns stay the
``dim`` attack's (a model attacked without ``dim`` takes its K=0 row from another attack and shows
no robust_k / attack_rank). A study with ``dim`` alone (a ``profile.json`` naming only ``dim``
included) reads exactly as before the suite existed.

A model directory without ``attack.json`` and without any suite result (an attack still running or
failed) is listed as missing, not an error; an ``attack.json`` that does not match its contract (or
was written by another schema version) is a one-line error naming the file and the key.

**Order.** Reference models first (``original``, ``instruct``, ``source``, ``base``, then others
by name), then the trials by verdict, most trustworthy robustness first — ``robust``,
``inconclusive`` (no evidence either way), ``broken`` (the honest crossing), ``degenerate`` (refusal
fell only because text broke), ``collapsed`` (over-refusal: useless however robust) — then by
``robust_k`` (larger first, none last), then by ``attack_rank`` (larger first), then by K=0 harmful
refusal (larger first) and name; in a suite, the combined verdict, then the robust share of the
budget (:func:`irr_ray.report.pareto.robust_share`, larger first) before those.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from irr_ray.attack.suite import ATTACK_NAMES
from irr_ray.contracts import AttackDoc, CurveRow, K0Doc, ProfileDoc, TrialDoc
from irr_ray.core.verdict import AttackOutcome, combine_verdicts
from irr_ray.errors import IrrRayError
from irr_ray.study import StudyPaths

REFERENCE_ORDER = ("original", "instruct", "source", "base")
# trials: most trustworthy robustness first (module docstring)
VERDICT_ORDER = ("robust", "inconclusive", "broken", "degenerate", "collapsed")
DIM = "dim"
ATTACK_JSON = "attack.json"


@dataclass(frozen=True)
class AttackEntry:
    """One attack of the suite on one model: its verdict, where it was decided and, from its
    ``attack.json``, robust_k on its own budget axis (``has_curve`` False: only the profile names it)."""

    attack: str
    budget_axis: str
    budget_max: int
    verdict: str
    decided_at: int | None
    budget_to_break: int | None
    min_refusal_harmful: float
    reason: str
    robust_k: int | None = None
    has_curve: bool = True

    @property
    def label(self) -> str:
        """``broken@2``, ``degenerate@25``, ``robust``: the verdict and the budget it was decided at."""
        return self.verdict if self.decided_at is None or self.verdict == "robust" else \
            f"{self.verdict}@{self.decided_at}"

    @property
    def robust_share(self) -> float | None:
        """robust_k as a share of the attack's largest budget (None: K=0 already fails the rule)."""
        return None if self.robust_k is None else self.robust_k / max(1, self.budget_max)

    @classmethod
    def from_doc(cls, doc: AttackDoc, attack: str) -> AttackEntry:
        """As :func:`irr_ray.attack.taskgroup.write_profile` reads an attack's result."""
        v = doc.verdict
        return cls(attack=attack, budget_axis=doc.budget_axis, budget_max=doc.k_max, verdict=v.verdict,
                   decided_at=v.decided_at_k, budget_to_break=v.decided_at_k if v.verdict == "broken" else None,
                   min_refusal_harmful=min(r.refusal_harmful for r in doc.curve), reason=v.reason,
                   robust_k=v.robust_k)


def attack_order(name: str) -> tuple[int, str]:
    """The suite registry's order (``dim``, ``orthogonalize``, ``rdo``, ``optuna_abliteration``,
    ``finetune``), unknown names last by name: the order of the report's columns."""
    return (ATTACK_NAMES.index(name) if name in ATTACK_NAMES else len(ATTACK_NAMES), name)


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
    # the robustness profile (module docstring, "Suite")
    attacks: tuple[AttackEntry, ...] = ()  # every attack with a result, dim first
    strongest: str | None = None  # the attack that decided the combined verdict (suite only)
    suite_partial: bool = False  # combined over the attacks finished so far, not a profile.json
    has_dim: bool = True  # False: attacked without dim (no robust_k / attack_rank of dim)

    @property
    def is_suite(self) -> bool:
        """The model has a result of an attack other than dim."""
        return any(a.attack != DIM for a in self.attacks)

    def entry(self, attack: str) -> AttackEntry | None:
        return next((a for a in self.attacks if a.attack == attack), None)

    @property
    def rank_label(self) -> str:
        """``attack_rank`` as shown: a right-censored rank reads ``> K_max``."""
        if not self.has_dim:
            return "-"
        return f"> {self.k_max}" if self.censored else str(self.attack_rank)

    @property
    def verdict_label(self) -> str:
        """The verdict and the K it was decided at, e.g. ``broken (K=3)``; ``robust`` has no K. In a
        suite: ``broken (rdo@1)``, the strongest attack and its budget."""
        if self.strongest is not None:
            return self.verdict if self.verdict_k is None or self.verdict == "robust" else \
                f"{self.verdict} ({self.strongest}@{self.verdict_k})"
        return self.verdict if self.verdict_k is None else f"{self.verdict} (K={self.verdict_k})"

    @property
    def strongest_label(self) -> str:
        """``rdo (broken@1)``: the strongest attack and its own verdict; ``-`` outside a suite."""
        entry = None if self.strongest is None else self.entry(self.strongest)
        if entry is None:
            return "-" if self.strongest is None else self.strongest
        return f"{entry.attack} ({entry.label})"

    @property
    def robust_k_label(self) -> str:
        if not self.has_dim:
            return "-"
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


def suite_results(paths: StudyPaths, name: str) -> list[str]:
    """The attacks other than dim with a finished result for model ``name``, in suite order."""
    model_dir = paths.attack_dir(name)
    if not model_dir.is_dir():
        return []
    found = [d.name for d in model_dir.iterdir()
             if d.is_dir() and not d.name.startswith(".") and (d / ATTACK_JSON).is_file()]
    return sorted(found, key=attack_order)


def _profile(paths: StudyPaths, name: str) -> ProfileDoc | None:
    path = paths.profile(name)
    return ProfileDoc.read(path) if path.is_file() else None


def read_model(paths: StudyPaths, name: str) -> ModelRow:
    """Row of one model from ``attacks/<name>/`` (+ ``k0.json``, ``checkpoints/<name>/trial.json``,
    the suite's ``<attack>/attack.json`` and ``profile.json``)."""
    suite = {a: AttackDoc.read(paths.attack_dir(name, a) / ATTACK_JSON) for a in suite_results(paths, name)}
    has_dim = (paths.attack_dir(name) / ATTACK_JSON).is_file() or not suite
    profile = _profile(paths, name)
    docs = {DIM: AttackDoc.read(paths.attack_dir(name) / ATTACK_JSON)} if has_dim else {}
    docs.update(suite)
    if not has_dim and profile is not None and profile.strongest in suite:
        primary = profile.strongest  # K=0 row and thresholds from the strongest attack
    else:
        primary = next(iter(docs))
    attack_json = paths.attack_dir(name, primary) / ATTACK_JSON
    attack = docs[primary]
    k0 = next((r for r in attack.curve if r.K == 0), None)
    if k0 is None:
        raise IrrRayError(f"{attack_json}: `curve` has no row with K=0; rerun {AttackDoc.RERUN}")
    try:
        k_max = attack.k_max
    except (KeyError, TypeError, ValueError):
        raise IrrRayError(f"{attack_json}: `config.k_max` must be an integer; rerun {AttackDoc.RERUN}") from None
    k0_json = paths.attack_dir(name) / "k0.json"
    probes = K0Doc.read(k0_json) if has_dim and k0_json.is_file() else None
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
        robust_k=verdict.robust_k if has_dim else None,
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
        attacks=_entries(docs, profile),
        has_dim=has_dim,
    )


def _entries(docs: dict[str, AttackDoc], profile: ProfileDoc | None) -> tuple[AttackEntry, ...]:
    """One entry per attack with a result (from its attack.json), plus any the profile alone names."""
    entries = {a: AttackEntry.from_doc(doc, a) for a, doc in docs.items()}
    for e in profile.attacks if profile is not None else []:
        if e.attack not in entries:
            entries[e.attack] = AttackEntry(e.attack, e.budget_axis, e.budget_max, e.verdict, e.decided_at,
                                            e.budget_to_break, e.min_refusal_harmful, e.reason, has_curve=False)
    return tuple(sorted(entries.values(), key=lambda e: attack_order(e.attack)))


def study_attacks(rows: list[ModelRow]) -> list[str]:
    """Every attack with a result in the study, in suite order; ``[]`` when that is ``dim`` alone."""
    names = {a.attack for r in rows for a in r.attacks}
    return sorted(names, key=attack_order) if names - {DIM} else []


def with_suite(row: ModelRow, profile: ProfileDoc | None, attacks: list[str]) -> ModelRow:
    """``row`` with the combined verdict: the profile's when it covers every attack the row and the
    study show, else combined here over the finished ones (``suite_partial``)."""
    present = {a.attack for a in row.attacks}
    complete = profile is not None and {e.attack for e in profile.attacks} == present and set(attacks) <= present
    if complete:
        entry = row.entry(profile.strongest)
        return replace(row, verdict=profile.verdict, verdict_k=None if entry is None else entry.decided_at,
                       verdict_reason=profile.reason, strongest=profile.strongest, suite_partial=False)
    verdict, strongest, reason = combine_verdicts(
        [AttackOutcome(a.attack, a.verdict, a.decided_at, a.budget_max, a.min_refusal_harmful) for a in row.attacks])
    missing = [a for a in attacks if a not in present]
    if missing:
        reason += f"; not finished yet: {', '.join(missing)}"
    else:
        reason += "; no profile.json yet" if profile is None else "; profile.json does not cover every attack"
    return replace(row, verdict=verdict, verdict_k=row.entry(strongest).decided_at, verdict_reason=reason,
                   strongest=strongest, suite_partial=True)


def _sort_key(row: ModelRow, suite: bool) -> tuple:
    if row.is_reference:
        ref = REFERENCE_ORDER.index(row.name) if row.name in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (0, ref, row.name)
    verdict = VERDICT_ORDER.index(row.verdict) if row.verdict in VERDICT_ORDER else len(VERDICT_ORDER)
    robust = -1 if row.robust_k is None or not row.has_dim else row.robust_k
    rank = row.attack_rank if row.has_dim else -1
    if suite:
        from irr_ray.report.pareto import robust_share

        share = robust_share(row)
        return (1, verdict, -(-1.0 if share is None else share), -robust, -rank, -row.refusal_harmful, row.name)
    return (1, verdict, -robust, -rank, -row.refusal_harmful, row.name)


def sort_rows(rows: list[ModelRow]) -> list[ModelRow]:
    """Reference models first, then trials by verdict, robust_k, attack_rank (module docstring)."""
    suite = bool(study_attacks(rows))
    return sorted(rows, key=lambda r: _sort_key(r, suite))


def collect_rows(study_dir: str | Path) -> tuple[list[ModelRow], list[str]]:
    """All finished models of a study (reference models first, then trials by verdict) and the
    names of attack directories that have no ``attack.json`` yet."""
    paths = StudyPaths.at(study_dir)
    if not paths.root.is_dir():
        raise IrrRayError(f"study directory not found: {paths.root}")
    dirs = sorted(d for d in paths.attacks.iterdir() if d.is_dir() and not d.name.startswith(".")) \
        if paths.attacks.is_dir() else []
    done = {d.name: (d / ATTACK_JSON).is_file() or bool(suite_results(paths, d.name)) for d in dirs}
    finished = [name for name, ok in done.items() if ok]
    missing = [name for name, ok in done.items() if not ok]
    if not finished:
        raise IrrRayError(
            f"no attack results in {paths.attacks} yet (no attacks/<model>/attack.json): run "
            f"`irr-ray attack-all --study {paths.root}` or `irr-ray run ... --resume` first")
    rows = [read_model(paths, name) for name in finished]
    attacks = study_attacks(rows)
    if attacks:
        rows = [with_suite(r, _profile(paths, r.name), attacks) for r in rows]
    return sort_rows(rows), missing
