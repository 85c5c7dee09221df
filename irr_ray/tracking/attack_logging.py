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

A sweep trial logs into its own run (``trial.json``'s ``mlflow_run_id``), so the UI shows its
training metrics and its attack side by side; the original and base models get their own runs in
the study's experiment, nested under the study's parent run when there is one, tagged
``irr_ray.model_role``. Everything goes through :class:`mlflow.MlflowClient`, which leaves a
finished trial run finished. ``mlflow.json`` in the attack directory records the logged run, so a
rerun does not log twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from irr_ray.config import flatten
from irr_ray.contracts import AttackDoc, K0Doc
from irr_ray.tracking.names import (
    ATTACK_CENSORED_METRIC,
    ATTACK_RANK_METRIC,
    ATTACK_RANK_TAG,
    ATTACK_ROLE,
    MODEL_ROLE_TAG,
    MODEL_TAG,
    PARENT_RUN_TAG,
    ROBUST_K_METRIC,
    ROBUST_K_NONE,
    ROLE_TAG,
    STOP_REASON_TAG,
    VERDICT_K_TAG,
    VERDICT_TAG,
    curve_metric,
    k0_metric,
)
from irr_ray.utils.files import write_json_atomic

MARKER = "mlflow.json"
PLOT = "k_curve.png"
ARTIFACT_DIR = "attack"
_ARTIFACTS = ("attack.json", "directions.safetensors", "k0.json", "attack_log.json", PLOT)
CLASSES = ("harmful", "harmless")
OUTCOMES = (("refusal", "refused", "tab:red"), ("complied", "complied", "tab:green"),
            ("degenerate", "degenerate", "tab:gray"))
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100
K0_FIELDS = tuple(f"{outcome}_{cls}" for outcome, _, _ in OUTCOMES for cls in CLASSES)


def summary_text(attack: AttackDoc) -> str:
    """``verdict broken at K=3 · robust_k 2 · attack_rank 3``: the attack's outcome in one line."""
    v = attack.verdict
    at = "" if v.decided_at_k is None else f" at K={v.decided_at_k}"
    robust = "none" if v.robust_k is None else str(v.robust_k)
    return f"verdict {v.verdict}{at} · robust_k {robust} · attack_rank {attack.rank_label}"


def plot_k_curve(attack: AttackDoc, path: str | Path, title: str | None = None) -> Path:
    """Refused / complied / degenerate shares per K as stacked bars, one panel per class (harmful
    with the threshold line), the Wilson interval of refusal, the verdict's K marked (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = attack.curve
    ks = [row.K for row in curve]
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
        if attack.verdict.decided_at_k is not None:
            ax.axvline(attack.verdict.decided_at_k, ls=":", color="purple", lw=1.2,
                       label=f"{attack.verdict.verdict} at K={attack.verdict.decided_at_k}")
        ax.set(xlabel="K (directions ablated)", title=f"{cls} prompts", ylim=(0.0, 1.03))
        ax.set_xticks(ks)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of replies")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title or summary_text(attack), fontsize=10)
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _numbers(key: str, value: Any) -> list[tuple[str, float]]:
    """(``attack/<field>``, value) of one CurveRow field: booleans 0/1, intervals low/high, None skipped."""
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [(curve_metric(f"{key}_low"), float(value[0])), (curve_metric(f"{key}_high"), float(value[1]))]
    return [(curve_metric(key), float(value))]


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
    """Log one finished attack directory; returns the run id. ``run_id``: an existing run to add to
    (a trial's); otherwise a new run ``attack:<name>`` in ``experiment_id`` is created and finished."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    attack_dir = Path(attack_dir)
    marker = attack_dir / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("tracking_uri") == tracking_uri:
            return str(done["run_id"])
    attack = AttackDoc.read(attack_dir / "attack.json")
    k0 = K0Doc.read(attack_dir / "k0.json") if (attack_dir / "k0.json").is_file() else None
    plot_k_curve(attack, attack_dir / PLOT, title=f"{name}: {summary_text(attack)}")

    client = MlflowClient(tracking_uri=tracking_uri)
    tags = [RunTag(MODEL_ROLE_TAG, role), *(RunTag(k, v) for k, v in attack_tags(attack).items())]
    created = run_id is None
    if created:
        if experiment_id is None:
            raise ValueError("log_attack: a new run needs an experiment_id")
        run_tags = {ROLE_TAG: ATTACK_ROLE, MODEL_ROLE_TAG: role}
        if parent_run_id:
            run_tags[PARENT_RUN_TAG] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=f"attack:{name}", tags=run_tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in attack_metrics(attack, k0)]
    params = ([Param(f"attack.{k}", str(v)[:500]) for k, v in flatten(attack.config).items()]
              + [Param("model", str(attack.model)[:500])]) if created else []
    client.log_batch(run_id, metrics=metrics[:_BATCH_METRICS], params=params[:_BATCH_PARAMS], tags=tags)
    for i in range(_BATCH_METRICS, len(metrics), _BATCH_METRICS):  # MLflow's per-batch limits
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH_METRICS])
    for i in range(_BATCH_PARAMS, len(params), _BATCH_PARAMS):
        client.log_batch(run_id, params=params[i:i + _BATCH_PARAMS])
    for fname in _ARTIFACTS:
        if (attack_dir / fname).is_file():
            client.log_artifact(run_id, str(attack_dir / fname), artifact_path=ARTIFACT_DIR)
    if created:
        client.set_terminated(run_id, "FINISHED")
    write_json_atomic(marker, {"run_id": run_id, "tracking_uri": tracking_uri, "role": role})
    return run_id
