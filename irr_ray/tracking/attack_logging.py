"""Attack results into MLflow: the K-curve as metric history, the summary, the plot and the files.

Per model (one ``attacks/<name>/`` directory):

* metrics with ``step = K``: ``attack/refusal_harmful``, ``attack/refusal_harmless`` (and their
  Wilson bounds ``…_ci_low/_ci_high``), and for K ≥ 1 the chosen direction's ``attack/layer``,
  ``attack/position``, ``attack/norm``, ``attack/refusal_score``, ``attack/kl``, ``attack/induce_score``;
* metrics: ``attack_rank``, ``attack_censored`` (0/1), ``k0_refusal_harmful``, ``k0_refusal_harmless``,
  ``k0_linear_probe_acc``, ``k0_mlp_probe_acc``;
* artifacts under ``attack/``: ``k_curve.png``, ``attack.json``, ``directions.safetensors``,
  ``k0.json``, ``attack_log.json``.

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
from irr_ray.utils.files import write_json_atomic

MODEL_ROLE_TAG = "irr_ray.model_role"
ROLE_TAG = "irr_ray.role"
MARKER = "mlflow.json"
PLOT = "k_curve.png"
ARTIFACT_DIR = "attack"
_ARTIFACTS = ("attack.json", "directions.safetensors", "k0.json", "attack_log.json", PLOT)


def plot_k_curve(attack: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Harmful and harmless refusal vs K with 95% Wilson intervals and the threshold line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = attack["curve"]
    ks = [row["K"] for row in curve]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for key, colour, label in (("refusal_harmful", "tab:red", "harmful"), ("refusal_harmless", "tab:blue", "harmless")):
        ys = [row[key] for row in curve]
        lo = [row[key] - row[key + "_ci"][0] for row in curve]
        hi = [row[key + "_ci"][1] - row[key] for row in curve]
        ax.errorbar(ks, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=colour, label=f"{label} refusal")
    ax.axhline(attack["threshold"], ls="--", color="grey", lw=1, label=f"threshold {attack['threshold']:.2f}")
    ax.set(xlabel="K (directions ablated)", ylabel="refusal rate", ylim=(-0.03, 1.03),
           title=title or rank_text(attack))
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def rank_text(attack: dict[str, Any]) -> str:
    if attack["censored"]:
        return f"attack_rank > {attack['config']['k_max']} (censored)"
    return f"attack_rank = {attack['attack_rank']}"


def attack_metrics(attack: dict[str, Any], k0: dict[str, Any] | None) -> list[tuple[str, float, int]]:
    """(key, value, step) triples of one attack result."""
    out: list[tuple[str, float, int]] = []
    for row in attack["curve"]:
        k = int(row["K"])
        for cls in ("harmful", "harmless"):
            key = f"refusal_{cls}"
            out += [(f"attack/{key}", float(row[key]), k),
                    (f"attack/{key}_ci_low", float(row[key + "_ci"][0]), k),
                    (f"attack/{key}_ci_high", float(row[key + "_ci"][1]), k)]
        for key in ("layer", "position", "norm", "refusal_score", "kl", "induce_score"):
            if key in row:
                out.append((f"attack/{key}", float(row[key]), k))
    k0_row = attack["curve"][0]
    out += [("attack_rank", float(attack["attack_rank"]), 0), ("attack_censored", float(bool(attack["censored"])), 0),
            ("k0_refusal_harmful", float(k0_row["refusal_harmful"]), 0),
            ("k0_refusal_harmless", float(k0_row["refusal_harmless"]), 0)]
    for key in ("linear_probe_acc", "mlp_probe_acc"):
        if k0 and k0.get(key) is not None:
            out.append((f"k0_{key}", float(k0[key]), 0))
    return out


def find_study_parent(client: Any, trial_run_ids: list[str]) -> tuple[str | None, str | None]:
    """(parent run id, experiment id) of the first trial run that exists."""
    from mlflow.exceptions import MlflowException

    for run_id in trial_run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            continue
        return run.data.tags.get("mlflow.parentRunId"), run.info.experiment_id
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
    attack = json.loads((attack_dir / "attack.json").read_text())
    k0 = json.loads((attack_dir / "k0.json").read_text()) if (attack_dir / "k0.json").is_file() else None
    if not (attack_dir / PLOT).is_file():
        plot_k_curve(attack, attack_dir / PLOT, title=f"{name}: {rank_text(attack)}")

    client = MlflowClient(tracking_uri=tracking_uri)
    tags = [RunTag(MODEL_ROLE_TAG, role), RunTag("irr_ray.model", str(attack["model"])),
            RunTag("irr_ray.attack_rank", str(attack["attack_rank"]))]
    created = run_id is None
    if created:
        if experiment_id is None:
            raise ValueError("log_attack: a new run needs an experiment_id")
        run_tags = {ROLE_TAG: "attack", MODEL_ROLE_TAG: role}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=f"attack:{name}", tags=run_tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in attack_metrics(attack, k0)]
    params = ([Param(f"attack.{k}", str(v)[:500]) for k, v in flatten(attack["config"]).items()]
              + [Param("model", str(attack["model"])[:500])]) if created else []
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for fname in _ARTIFACTS:
        if (attack_dir / fname).is_file():
            client.log_artifact(run_id, str(attack_dir / fname), artifact_path=ARTIFACT_DIR)
    if created:
        client.set_terminated(run_id, "FINISHED")
    write_json_atomic(marker, {"run_id": run_id, "tracking_uri": tracking_uri, "role": role})
    return run_id
