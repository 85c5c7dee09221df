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
  (:class:`irr_ray.contracts.AttackDoc`).

Metrics: the K-curve as history with ``step = K`` under ``attack/<CurveRow field>``; the summary
``attack_rank``, ``robust_k`` (−1 when none), ``attack_censored`` (0/1) and ``k0_*`` (K=0 behaviour
and probe accuracies).
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


def curve_metric(field: str) -> str:
    """``attack/<field>``: one K-curve field as metric history."""
    return CURVE_PREFIX + field


def k0_metric(field: str) -> str:
    """``k0_<field>``: one K=0 number as a summary metric."""
    return K0_PREFIX + field
