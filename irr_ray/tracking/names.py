"""Every MLflow tag and metric name the attack logging and the report write or read, in one place.

Tags (strings on a run):

* ``irr_ray.role``: what a run is (``study`` / ``sweep`` parent, ``attack`` run of a reference
  model, ``report`` run); ``irr_ray.stage`` says the same on runs written before ``role`` existed
  (a sweep's parent carries both: ``stage`` = ``sweep`` or ``sentiment-sweep``).
* ``irr_ray.study``: the study directory, on a sweep's parent and trial runs; ``irr_ray.trial_id``,
  ``irr_ray.condition``: a trial run's Tune id and condition; ``irr_ray.stopped_early``
  (``true``/``false``): set when a trial's run is closed.
* ``irr_ray.model_role``: the attacked model's role (``trial``, ``original``, ``base`` …),
  ``irr_ray.model``: its path.
* ``irr_ray.verdict``, ``irr_ray.verdict_k`` (``-`` when undecided at a K), ``irr_ray.stop_reason``,
  ``irr_ray.attack_rank`` (``> K_max`` when censored): the attack's outcome
  (:class:`irr_ray.contracts.AttackDoc`) of the method's ``dim`` attack.
* A model attacked by a suite (``attacks/<model>/<attack>/attack.json``, ``profile.json``) also
  gets, per attack (``dim`` included): ``irr_ray.verdict.<attack>``, ``irr_ray.verdict_k.<attack>``,
  ``irr_ray.budget_axis.<attack>`` (what the attack's K counts); and from ``profile.json``:
  ``irr_ray.suite_verdict`` (the combined verdict), ``irr_ray.strongest_attack``,
  ``irr_ray.suite_reason``.

Metrics: the K-curve as history with ``step = K`` under ``attack/<CurveRow field>``; the summary
``attack_rank``, ``robust_k`` (−1 when none), ``attack_censored`` (0/1) and ``k0_*`` (K=0 behaviour
and probe accuracies). A suite attack's curve goes under its own prefix, ``<attack>/<CurveRow
field>`` (``rdo/refusal_harmful``, ``rdo/degenerate_harmful`` …, ``step`` = its budget), the numbers
it reported per budget (``CurveRow.info``) under ``<attack>/info/<key>``; per attack (``dim``
included) ``budget_to_break.<attack>`` (only when it broke the model), ``robust_k.<attack>`` (−1
when none) and ``min_refusal_harmful.<attack>``; from ``profile.json`` ``suite_broken`` (1 when the
strongest attack broke the model, else 0).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- tags
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
ROLE_TAG = "irr_ray.role"
STAGE_TAG = "irr_ray.stage"
MODEL_ROLE_TAG = "irr_ray.model_role"
MODEL_TAG = "irr_ray.model"
VERDICT_TAG = "irr_ray.verdict"
VERDICT_K_TAG = "irr_ray.verdict_k"
STOP_REASON_TAG = "irr_ray.stop_reason"
ATTACK_RANK_TAG = "irr_ray.attack_rank"
STUDY_TAG = "irr_ray.study"
TRIAL_ID_TAG = "irr_ray.trial_id"
CONDITION_TAG = "irr_ray.condition"
STOPPED_EARLY_TAG = "irr_ray.stopped_early"
SUITE_VERDICT_TAG = "irr_ray.suite_verdict"
STRONGEST_ATTACK_TAG = "irr_ray.strongest_attack"
SUITE_REASON_TAG = "irr_ray.suite_reason"

# values of ROLE_TAG / STAGE_TAG
SWEEP_ROLE = "sweep"  # a sweep's parent run (role and stage of the refusal study's sweep)
SENTIMENT_SWEEP_STAGE = "sentiment-sweep"
SENTIMENT_EVAL_STAGE = "sentiment-eval"
PARENT_ROLES = ("study", SWEEP_ROLE)  # a study's parent run, in order of preference
ATTACK_ROLE = "attack"
REPORT_ROLE = "report"

# ---------------------------------------------------------------------------- metrics
CURVE_PREFIX = "attack/"  # + a CurveRow field, step = K
ATTACK_RANK_METRIC = "attack_rank"
ROBUST_K_METRIC = "robust_k"
ATTACK_CENSORED_METRIC = "attack_censored"
K0_PREFIX = "k0_"  # + refusal_/complied_/degenerate_<class>, linear_probe_acc, mlp_probe_acc
ROBUST_K_NONE = -1.0  # robust_k metric value when K=0 already fails the robustness rule
SUITE_BROKEN_METRIC = "suite_broken"  # 1: the suite's combined verdict is broken, else 0
DIM_ATTACK = "dim"  # the method's attack: its curve keeps the ``attack/`` prefix


def curve_metric(field: str) -> str:
    """``attack/<field>``: one K-curve field as metric history."""
    return CURVE_PREFIX + field


def k0_metric(field: str) -> str:
    """``k0_<field>``: one K=0 number as a summary metric."""
    return K0_PREFIX + field


# ---------------------------------------------------------------------------- the attack suite


def suite_curve_metric(attack: str, field: str) -> str:
    """``<attack>/<field>`` (``rdo/refusal_harmful``): one field of a suite attack's curve, step =
    its budget; the ``dim`` attack's curve keeps :func:`curve_metric`'s ``attack/<field>``."""
    return curve_metric(field) if attack == DIM_ATTACK else f"{attack}/{field}"


def suite_info_metric(attack: str, key: str) -> str:
    """``<attack>/info/<key>``: a number the attack reported at one budget (``CurveRow.info``)."""
    return f"{attack}/info/{key}"


def attack_verdict_tag(attack: str) -> str:
    """``irr_ray.verdict.<attack>``: one attack's verdict on the model."""
    return f"{VERDICT_TAG}.{attack}"


def attack_verdict_k_tag(attack: str) -> str:
    """``irr_ray.verdict_k.<attack>``: the budget it was decided at (``-`` when none)."""
    return f"{VERDICT_K_TAG}.{attack}"


def budget_axis_tag(attack: str) -> str:
    """``irr_ray.budget_axis.<attack>``: what the attack's budget counts (directions, cone_dim …)."""
    return f"irr_ray.budget_axis.{attack}"


def budget_to_break_metric(attack: str) -> str:
    """``budget_to_break.<attack>``: the budget at which the attack broke the model."""
    return f"budget_to_break.{attack}"


def attack_robust_k_metric(attack: str) -> str:
    """``robust_k.<attack>``: the attack's robust_k on its own budget axis (−1 when none)."""
    return f"{ROBUST_K_METRIC}.{attack}"


def min_refusal_metric(attack: str) -> str:
    """``min_refusal_harmful.<attack>``: the lowest harmful refusal over the attack's curve."""
    return f"min_refusal_harmful.{attack}"
