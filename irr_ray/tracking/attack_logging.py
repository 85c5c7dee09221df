"""Attack results into MLflow: the K-curve as metric history, the verdict, the summary, the plot and
the files.

Per model (one ``attacks/<name>/`` directory, read through :class:`irr_ray.contracts.AttackDoc` and
:class:`~irr_ray.contracts.K0Doc`; names in :mod:`irr_ray.tracking.names`):

* metrics with ``step = K``: every numeric field of the K-curve row as ``attack/<field>``
  (``attack/refusal_harmful``, ``attack/complied_harmful``, ``attack/degenerate_harmful`` … for both
  classes, the Wilson bounds as ``attack/refusal_<class>_ci_low/_ci_high``, ``attack/p_refusal_*``,
  ``attack/reply_nll_*``, ``attack/kl_harmless`` and, for K ≥ 1, the chosen direction's ``layer``,
  ``position``, ``norm``, ``refusal_score``, ``kl``, ``induce_score``, ``survivors``, ``fallback``);
  booleans as 0/1, absent values skipped;
* metrics: ``attack_rank``, ``robust_k`` (−1 when none), ``attack_censored`` (0/1), and
  ``k0_refusal_*``, ``k0_complied_*``, ``k0_degenerate_*`` (both classes), ``k0_linear_probe_acc``,
  ``k0_mlp_probe_acc``;
* tags: ``irr_ray.verdict``, ``irr_ray.verdict_k`` (``-`` when the verdict has no K), ``irr_ray.stop_reason``,
  ``irr_ray.attack_rank`` (``> K_max`` when censored), ``irr_ray.model_role``, ``irr_ray.model``;
* artifacts under ``attack/``: ``k_curve.png`` (refused / complied / degenerate shares per K, harmful
  and harmless panels), ``attack.json``, ``directions.safetensors``, ``k0.json``, ``attack_log.json``.

A model attacked by a suite (``attacks/<name>/<attack>/attack.json`` of the other attacks,
``attacks/<name>/profile.json`` once all finished) gets, in the same run:

* per suite attack: its curve as metrics with ``step`` = its budget under ``<attack>/<field>``
  (``rdo/refusal_harmful``, ``rdo/degenerate_harmful`` …), the numbers it reported per budget
  (``CurveRow.info``) as ``<attack>/info/<key>``, and its directory (``attack.json``,
  ``attack_log.json``, its own files, a ``k_curve.png`` on its budget axis) under
  ``attack/<attack>/``;
* per attack, ``dim`` included: tags ``irr_ray.verdict.<attack>``, ``irr_ray.verdict_k.<attack>``,
  ``irr_ray.budget_axis.<attack>``; metrics ``budget_to_break.<attack>`` (when broken),
  ``robust_k.<attack>``, ``min_refusal_harmful.<attack>``;
* from ``profile.json``: tags ``irr_ray.suite_verdict``, ``irr_ray.strongest_attack``,
  ``irr_ray.suite_reason``, metric ``suite_broken`` (0/1), the file under ``attack/``.

A model attacked by ``dim`` alone (a profile naming only ``dim`` included) is logged as above and
nothing more. A model without ``dim`` result gets a run with the suite's part only.

A sweep trial logs into its own run (``trial.json``'s ``mlflow_run_id``), so the UI shows its
training metrics and its attack side by side; the original and base models get their own runs in
the study's experiment, nested under the study's parent run when there is one, tagged
``irr_ray.model_role``. Everything goes through :class:`mlflow.MlflowClient`, which leaves a
finished trial run finished. ``mlflow.json`` in the attack directory records the logged run and
what went into it (``attacks``: the curves logged, ``summaries``: the per-attack tags, ``profile``:
the hash of the logged ``profile.json``), so a rerun logs only what arrived since: a model whose
``dim`` result was logged earlier gets its suite results added to the same run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from irr_ray.config import flatten
from irr_ray.contracts import AttackDoc, K0Doc, ProfileDoc
from irr_ray.tracking.names import (
    ATTACK_CENSORED_METRIC,
    ATTACK_RANK_METRIC,
    ATTACK_RANK_TAG,
    ATTACK_ROLE,
    DIM_ATTACK,
    MODEL_ROLE_TAG,
    MODEL_TAG,
    PARENT_RUN_TAG,
    ROBUST_K_METRIC,
    ROBUST_K_NONE,
    ROLE_TAG,
    STOP_REASON_TAG,
    STRONGEST_ATTACK_TAG,
    SUITE_BROKEN_METRIC,
    SUITE_REASON_TAG,
    SUITE_VERDICT_TAG,
    VERDICT_K_TAG,
    VERDICT_TAG,
    attack_robust_k_metric,
    attack_verdict_k_tag,
    attack_verdict_tag,
    budget_axis_tag,
    budget_to_break_metric,
    curve_metric,
    k0_metric,
    min_refusal_metric,
    suite_curve_metric,
    suite_info_metric,
)
from irr_ray.utils.files import file_sha256, write_json_atomic

MARKER = "mlflow.json"
PLOT = "k_curve.png"
PROFILE = "profile.json"
ARTIFACT_DIR = "attack"
_ARTIFACTS = ("attack.json", "directions.safetensors", "k0.json", "attack_log.json", PLOT)
CLASSES = ("harmful", "harmless")
OUTCOMES = (("refusal", "refused", "tab:red"), ("complied", "complied", "tab:green"),
            ("degenerate", "degenerate", "tab:gray"))
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100
_TAG_VALUE_MAX = 5000  # under MLflow's limit on a tag value
K0_FIELDS = tuple(f"{outcome}_{cls}" for outcome, _, _ in OUTCOMES for cls in CLASSES)


def summary_text(attack: AttackDoc) -> str:
    """``verdict broken at K=3 · robust_k 2 · attack_rank 3``: the attack's outcome in one line (a
    suite attack names its budget axis: ``at cone_dim=2``)."""
    v = attack.verdict
    axis = "K" if attack.attack == DIM_ATTACK else attack.budget_axis
    at = "" if v.decided_at_k is None else f" at {axis}={v.decided_at_k}"
    robust = "none" if v.robust_k is None else str(v.robust_k)
    return f"verdict {v.verdict}{at} · robust_k {robust} · attack_rank {attack.rank_label}"


def plot_k_curve(attack: AttackDoc, path: str | Path, title: str | None = None) -> Path:
    """Refused / complied / degenerate shares per K as stacked bars, one panel per class (harmful
    with the threshold line), the Wilson interval of refusal, the verdict's K marked (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = attack.curve
    budgets = [row.K for row in curve]
    # dim: x = K; a suite attack: one evenly spaced bar per budget of its schedule, labelled with it
    ks = budgets if attack.attack == DIM_ATTACK else list(range(len(curve)))
    fig = Figure(figsize=(9.0, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, cls in zip(axes, CLASSES):
        bottom = [0.0] * len(curve)
        for outcome, label, colour in OUTCOMES:
            share = [float(getattr(row, f"{outcome}_{cls}")) for row in curve]
            ax.bar(ks, share, bottom=bottom, width=0.8, color=colour, alpha=0.75, label=label)
            bottom = [b + s for b, s in zip(bottom, share)]
        refused = [row.refusal_harmful if cls == "harmful" else row.refusal_harmless for row in curve]
        cis = [row.refusal_harmful_ci if cls == "harmful" else row.refusal_harmless_ci for row in curve]
        ax.errorbar(ks, refused, yerr=[[r - ci[0] for r, ci in zip(refused, cis)],
                                       [ci[1] - r for r, ci in zip(refused, cis)]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=3, label="refusal 95% CI")
        if cls == "harmful":
            ax.axhline(attack.threshold, ls="--", color="black", lw=1, label=f"threshold {attack.threshold:.2f}")
        decided = attack.verdict.decided_at_k
        if decided is not None and decided in budgets:
            axis = "K" if attack.attack == DIM_ATTACK else attack.budget_axis
            ax.axvline(ks[budgets.index(decided)], ls=":", color="purple", lw=1.2,
                       label=f"{attack.verdict.verdict} at {axis}={decided}")
        xlabel = "K (directions ablated)" if attack.attack == DIM_ATTACK else \
            f"{attack.attack} budget ({attack.budget_axis})"
        ax.set(xlabel=xlabel, title=f"{cls} prompts", ylim=(0.0, 1.03))
        ax.set_xticks(ks, [str(b) for b in budgets])
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of replies")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title or summary_text(attack), fontsize=10)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _numbers(key: str, value: Any, attack: str = DIM_ATTACK) -> list[tuple[str, float]]:
    """(``attack/<field>``, value) of one CurveRow field (``<attack>/<field>`` for a suite attack):
    booleans 0/1, intervals low/high, None skipped."""
    name = curve_metric if attack == DIM_ATTACK else (lambda field: suite_curve_metric(attack, field))
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [(name(f"{key}_low"), float(value[0])), (name(f"{key}_high"), float(value[1]))]
    return [(name(key), float(value))]


def attack_metrics(attack: AttackDoc, k0: K0Doc | None) -> list[tuple[str, float, int]]:
    """(key, value, step) triples of one attack result."""
    out: list[tuple[str, float, int]] = []
    for row in attack.curve:
        for key, value in row.model_dump().items():
            if key != "K":
                out += [(name, x, row.K) for name, x in _numbers(key, value)]
    k0_row = next((row for row in attack.curve if row.K == 0), attack.curve[0])
    robust = attack.verdict.robust_k
    out += [(ATTACK_RANK_METRIC, float(attack.attack_rank), 0),
            (ROBUST_K_METRIC, ROBUST_K_NONE if robust is None else float(robust), 0),
            (ATTACK_CENSORED_METRIC, float(attack.censored), 0)]
    out += [(k0_metric(key), float(getattr(k0_row, key)), 0) for key in K0_FIELDS]
    for key in ("linear_probe_acc", "mlp_probe_acc"):
        value = None if k0 is None else getattr(k0, key)
        if value is not None:
            out.append((k0_metric(key), float(value), 0))
    return out


def attack_tags(attack: AttackDoc) -> dict[str, str]:
    """The outcome tags of one attack result (verdict, its K, stop reason, attack_rank)."""
    k = attack.verdict.decided_at_k
    return {VERDICT_TAG: attack.verdict.verdict, VERDICT_K_TAG: "-" if k is None else str(k),
            STOP_REASON_TAG: attack.stop_reason, ATTACK_RANK_TAG: attack.rank_label,
            MODEL_TAG: str(attack.model)}


def suite_attacks(model_dir: str | Path) -> list[str]:
    """The suite attacks other than ``dim`` with a finished result in ``model_dir``
    (``<attack>/attack.json``), by name."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(d.name for d in model_dir.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (d / "attack.json").is_file())


def _info_key(key: str) -> str:
    """An ``info`` key as MLflow accepts it in a metric name."""
    return re.sub(r"[^\w\-. /]", "_", str(key))


def suite_curve_metrics(attack: AttackDoc) -> list[tuple[str, float, int]]:
    """(key, value, step = budget) of a suite attack's curve: every numeric CurveRow field under
    ``<attack>/``, the numbers (and booleans, 0/1) of ``info`` under ``<attack>/info/``."""
    name = attack.attack
    out: list[tuple[str, float, int]] = []
    for row in attack.curve:
        for key, value in row.model_dump().items():
            if key not in ("K", "info"):
                out += [(metric, x, row.K) for metric, x in _numbers(key, value, name)]
        for key, value in sorted((row.info or {}).items()):
            if isinstance(value, (bool, int, float)):
                out.append((suite_info_metric(name, _info_key(key)), float(value), row.K))
    return out


def attack_summary(name: str, attack: AttackDoc) -> tuple[dict[str, str], list[tuple[str, float, int]]]:
    """(tags, metrics) that place one attack of a suite beside the others: its verdict, the budget it
    was decided at, its budget axis; budget_to_break (broken only), robust_k, min harmful refusal."""
    v = attack.verdict
    tags = {attack_verdict_tag(name): v.verdict,
            attack_verdict_k_tag(name): "-" if v.decided_at_k is None else str(v.decided_at_k),
            budget_axis_tag(name): attack.budget_axis}
    metrics = [(attack_robust_k_metric(name), ROBUST_K_NONE if v.robust_k is None else float(v.robust_k), 0),
               (min_refusal_metric(name), float(min(row.refusal_harmful for row in attack.curve)), 0)]
    if v.verdict == "broken" and v.decided_at_k is not None:
        metrics.append((budget_to_break_metric(name), float(v.decided_at_k), 0))
    return tags, metrics


def profile_summary(profile: ProfileDoc) -> tuple[dict[str, str], list[tuple[str, float, int]]]:
    """(tags, metrics) of ``profile.json``: the combined verdict, the strongest attack, whether it broke."""
    tags = {SUITE_VERDICT_TAG: profile.verdict, STRONGEST_ATTACK_TAG: profile.strongest,
            SUITE_REASON_TAG: profile.reason[:_TAG_VALUE_MAX]}
    return tags, [(SUITE_BROKEN_METRIC, float(profile.verdict == "broken"), 0)]


def is_suite_profile(profile: ProfileDoc | None) -> bool:
    """A profile that names an attack besides ``dim`` (a dim-only profile adds nothing to log)."""
    return profile is not None and any(e.attack != DIM_ATTACK for e in profile.attacks)


def find_study_parent(client: Any, trial_run_ids: list[str]) -> tuple[str | None, str | None]:
    """(parent run id, experiment id) of the first trial run that exists."""
    from mlflow.exceptions import MlflowException

    for run_id in trial_run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue
        return run.data.tags.get(PARENT_RUN_TAG), run.info.experiment_id
    return None, None


def _read_marker(marker: Path, tracking_uri: str) -> dict[str, Any] | None:
    """What ``mlflow.json`` says was logged to ``tracking_uri``; a marker written before the suite
    existed recorded the ``dim`` result only."""
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    if done.get("tracking_uri") != tracking_uri:
        return None
    return {**done, "attacks": list(done.get("attacks", [DIM_ATTACK])), "summaries": list(done.get("summaries", [])),
            "profile": done.get("profile")}


def logged_run_id(attack_dir: str | Path) -> str | None:
    """The run a model's attack results were logged to (``mlflow.json``), whatever tracking URI it
    names: a study directory that moved keeps its runs, and only the path in the URI changed."""
    marker = Path(attack_dir) / MARKER
    if not marker.is_file():
        return None
    try:
        run_id = json.loads(marker.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):  # unreadable: no link, the results themselves are fine
        return None
    return str(run_id) if run_id else None


def _log_batch(client: Any, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
    """One ``log_batch`` within MLflow's per-batch limits, the rest in further batches."""
    client.log_batch(run_id, metrics=metrics[:_BATCH_METRICS], params=params[:_BATCH_PARAMS], tags=tags)
    for i in range(_BATCH_METRICS, len(metrics), _BATCH_METRICS):  # MLflow's per-batch limits
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])
    for i in range(_BATCH_PARAMS, len(params), _BATCH_PARAMS):
        client.log_batch(run_id, params=params[i:i + _BATCH_PARAMS])


def log_attack(
    attack_dir: str | Path,
    tracking_uri: str,
    *,
    role: str,
    name: str,
    run_id: str | None = None,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Log one model's finished attack directory (``dim`` result, suite results, profile); returns
    the run id. ``run_id``: an existing run to add to (a trial's); otherwise a new run
    ``attack:<name>`` in ``experiment_id`` is created and finished. Only what the marker does not
    record yet is logged, into the run it records."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    attack_dir = Path(attack_dir)
    marker_path = attack_dir / MARKER
    done = _read_marker(marker_path, tracking_uri)
    logged = set() if done is None else set(done["attacks"])
    summarised = set() if done is None else set(done["summaries"])
    suite = {a: AttackDoc.read(attack_dir / a / "attack.json") for a in suite_attacks(attack_dir)}
    # no dim result and no suite result: AttackDoc.read says which file is missing and what to run
    has_dim = (attack_dir / "attack.json").is_file() or not suite
    attack = AttackDoc.read(attack_dir / "attack.json") if has_dim else None
    profile = ProfileDoc.read(attack_dir / PROFILE) if (attack_dir / PROFILE).is_file() else None
    profile_hash = file_sha256(attack_dir / PROFILE) if profile is not None else None
    is_suite = bool(suite) or is_suite_profile(profile)

    log_dim = attack is not None and DIM_ATTACK not in logged
    new_suite = [a for a in suite if a not in logged]
    docs = {**({DIM_ATTACK: attack} if attack is not None else {}), **suite}
    new_summaries = [a for a in docs if a not in summarised] if is_suite else []
    log_profile = is_suite_profile(profile) and (done is None or done["profile"] != profile_hash)
    if done is not None and not (log_dim or new_suite or new_summaries or log_profile):
        return str(done["run_id"])

    client = MlflowClient(tracking_uri=tracking_uri)
    created = done is None and run_id is None
    if done is not None:
        run_id = str(done["run_id"])
    elif run_id is None:
        if experiment_id is None:
            raise ValueError("log_attack: a new run needs an experiment_id")
        run_tags = {ROLE_TAG: ATTACK_ROLE, MODEL_ROLE_TAG: role}
        if parent_run_id:
            run_tags[PARENT_RUN_TAG] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=f"attack:{name}", tags=run_tags).info.run_id
    now = int(time.time() * 1000)
    first = attack if attack is not None else next(iter(suite.values()))
    params = ([Param(f"attack.{k}", str(v)[:500]) for k, v in flatten(first.config).items()]
              + [Param("model", str(first.model)[:500])]) if created else []

    if log_dim:
        k0 = K0Doc.read(attack_dir / "k0.json") if (attack_dir / "k0.json").is_file() else None
        plot_k_curve(attack, attack_dir / PLOT, title=f"{name}: {summary_text(attack)}")
        tags = [RunTag(MODEL_ROLE_TAG, role), *(RunTag(k, v) for k, v in attack_tags(attack).items())]
        metrics = [Metric(key, value, now, step) for key, value, step in attack_metrics(attack, k0)]
        _log_batch(client, run_id, metrics, params, tags)
        for fname in _ARTIFACTS:
            if (attack_dir / fname).is_file():
                client.log_artifact(run_id, str(attack_dir / fname), artifact_path=ARTIFACT_DIR)
    elif done is None:  # a model attacked without dim: the run's params, role and model
        _log_batch(client, run_id, [], params, [RunTag(MODEL_ROLE_TAG, role), RunTag(MODEL_TAG, str(first.model))])

    tags, values = [], []
    for a in new_suite:
        doc = suite[a]
        plot_k_curve(doc, attack_dir / a / PLOT, title=f"{name} · {a}: {summary_text(doc)}")
        values += suite_curve_metrics(doc)
    for a in new_summaries:
        t, m = attack_summary(a, docs[a])
        tags += [RunTag(k, v) for k, v in t.items()]
        values += m
    if log_profile:
        t, m = profile_summary(profile)
        tags += [RunTag(k, v) for k, v in t.items()]
        values += m
    if tags or values:
        _log_batch(client, run_id, [Metric(k, v, now, step) for k, v, step in values], [], tags)
    for a in new_suite:
        client.log_artifacts(run_id, str(attack_dir / a), artifact_path=f"{ARTIFACT_DIR}/{a}")
    if log_profile:
        client.log_artifact(run_id, str(attack_dir / PROFILE), artifact_path=ARTIFACT_DIR)

    if created:
        client.set_terminated(run_id, "FINISHED")
    record = {"run_id": run_id, "tracking_uri": tracking_uri,
              "role": role if done is None else done.get("role", role),
              "attacks": sorted(logged | ({DIM_ATTACK} if log_dim else set()) | set(new_suite)),
              "summaries": sorted(summarised | set(new_summaries)),
              "profile": profile_hash if log_profile else (None if done is None else done["profile"])}
    write_json_atomic(marker_path, record)
    return run_id
