"""Read a study's results into one row per attacked model.

Sources (contracts in ``design.md``), all read defensively because three stages write them:

- ``attacks/<name>/attack.json`` (required): ``attack_rank``, ``censored``, ``threshold``, ``config``
  and the ``curve`` whose ``K = 0`` row gives the unattacked refusal rates with 95% Wilson intervals.
- ``attacks/<name>/k0.json`` (optional): the K=0 evaluation, for the probe accuracies.
- ``checkpoints/<name>/trial.json`` (optional, sweep trials only): the condition, λ_mean, λ_cov,
  kd_T, kd_λ and the trial's MLflow run id. Models without one (``original``, ``base``) are
  reference models and keep their directory name as condition.

A model directory without ``attack.json`` (an attack still running or failed) is listed as missing,
not an error; a malformed ``attack.json`` is an error naming the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from irr_ray.config import flatten
from irr_ray.errors import IrrRayError
from irr_ray.study import StudyPaths

REFERENCE_ORDER = ("original", "instruct", "source", "base")

# trial.json keys, by the last dotted segment of the flattened trial (first alias found wins)
_TRIAL_KEYS: dict[str, tuple[str, ...]] = {
    "condition": ("condition", "preset", "condition_name"),
    "match": ("match", "matching", "match_kind"),
    "lambda_mean": ("lambda_mean", "lam_mean", "mean_lambda"),
    "lambda_cov": ("lambda_cov", "lam_cov", "cov_lambda"),
    "kd_T": ("kd_T", "kd_t", "kd_temperature"),
    "kd_lambda": ("kd_lambda", "kd_lam", "lambda_kd"),
    "mlflow_run_id": ("mlflow_run_id", "run_id"),
}
# k0.json: `linear_probe_acc` / `mlp_probe_acc` by contract; nested spellings accepted
_PROBE_KEYS = {"linear": ("linear_probe_acc", "linear_probe_accuracy"), "mlp": ("mlp_probe_acc", "mlp_probe_accuracy")}
_PROBE_PATTERNS = {
    "linear": re.compile(r"linear.*acc|acc.*linear|(^|\.)linear$", re.I),
    "mlp": re.compile(r"mlp.*acc|acc.*mlp|(^|\.)mlp$", re.I),
}


@dataclass(frozen=True)
class ModelRow:
    """One attacked model: its training condition, K=0 behaviour, probes and attack rank."""

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
    match: str | None = None
    lambda_mean: float | None = None
    lambda_cov: float | None = None
    kd_T: float | None = None
    kd_lambda: float | None = None
    linear_probe_acc: float | None = None
    mlp_probe_acc: float | None = None
    mlflow_run_id: str | None = None
    curve: list[dict[str, Any]] = field(default_factory=list, compare=False, repr=False)

    @property
    def rank_label(self) -> str:
        """``attack_rank`` as shown: a right-censored rank reads ``> K_max``."""
        return f"> {self.k_max}" if self.censored else str(self.attack_rank)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IrrRayError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno}); rerun the stage that wrote it") from None
    if not isinstance(data, dict):
        raise IrrRayError(f"{path}: expected a JSON object at the top level")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _ci(value: Any, path: Path, key: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) is not None for v in value):
        return float(value[0]), float(value[1])
    raise IrrRayError(f"{path}: `{key}` must be [low, high], got {value!r}")


def _required_rate(row: dict[str, Any], key: str, path: Path) -> float:
    x = _number(row.get(key))
    if x is None:
        raise IrrRayError(f"{path}: curve row K=0 lacks a numeric `{key}`")
    return x


def _find(flat: dict[str, Any], aliases: tuple[str, ...]) -> Any:
    """Value of the first alias matching a flattened key: exactly, then under ``config.`` (the
    trial's effective training config, not what the search sampled), then as any last segment."""
    lowered = {k.lower(): v for k, v in flat.items()}
    for prefix in ("", "config."):
        for alias in aliases:
            if prefix + alias.lower() in lowered:
                return lowered[prefix + alias.lower()]
    for alias in aliases:
        for k, v in flat.items():
            if k.rsplit(".", 1)[-1].lower() == alias.lower():
                return v
    return None


def _probe(flat: dict[str, Any], kind: str) -> float | None:
    exact = _number(_find(flat, _PROBE_KEYS[kind]))
    if exact is not None:
        return exact
    pattern = _PROBE_PATTERNS[kind]
    for key, value in flat.items():
        if "probe" in key.lower() and pattern.search(key) and _number(value) is not None:
            return _number(value)
    return None


def _trial_info(trial_json: Path) -> dict[str, Any]:
    if not trial_json.is_file():
        return {}
    trial = _read_json(trial_json)
    flat = flatten(trial)
    return {key: _find(flat, aliases) for key, aliases in _TRIAL_KEYS.items()}


def _condition_label(name: str, info: dict[str, Any]) -> str:
    if info.get("condition"):
        return str(info["condition"])
    parts = []
    if info.get("match") not in (None, "none"):
        parts.append(str(info["match"]))
    if (_number(info.get("kd_lambda")) or 0.0) > 0:
        parts.append("kd")
    return "+".join(parts) if parts else name


def read_model(paths: StudyPaths, name: str) -> ModelRow:
    """Row of one model from ``attacks/<name>/`` (+ ``k0.json``, ``checkpoints/<name>/trial.json``)."""
    attack_json = paths.attack_dir(name) / "attack.json"
    attack = _read_json(attack_json)
    curve = attack.get("curve")
    if not isinstance(curve, list) or not curve:
        raise IrrRayError(f"{attack_json}: `curve` must be a non-empty list of rows starting at K=0")
    k0 = next((r for r in curve if isinstance(r, dict) and r.get("K") == 0), None)
    if k0 is None:
        raise IrrRayError(f"{attack_json}: `curve` has no row with K=0")
    rank = attack.get("attack_rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise IrrRayError(f"{attack_json}: `attack_rank` must be a non-negative integer, got {rank!r}")
    censored = bool(attack.get("censored", False))
    config = attack.get("config") if isinstance(attack.get("config"), dict) else {}
    k_max = _find(flatten(config), ("k_max", "K_max", "max_rank"))
    if isinstance(k_max, bool) or not isinstance(k_max, int):
        # a censored rank is K_max + 1 by contract; otherwise the deepest K the curve reached
        k_max = rank - 1 if censored else max(int(r.get("K", 0)) for r in curve if isinstance(r, dict))

    k0_json = paths.attack_dir(name) / "k0.json"
    k0_flat = flatten(_read_json(k0_json)) if k0_json.is_file() else {}
    k0_flat.update({k: v for k, v in flatten(k0).items() if k not in k0_flat})
    info = _trial_info(paths.checkpoint_dir(name) / "trial.json")
    is_reference = not info
    # show only the knobs that act: λ_mean with mean matching, λ_cov with cov matching, T with KD on
    match = info.get("match")
    kd_on = (_number(info.get("kd_lambda")) or 0.0) > 0
    return ModelRow(
        name=name,
        condition=_condition_label(name, info),
        is_reference=is_reference,
        refusal_harmful=_required_rate(k0, "refusal_harmful", attack_json),
        refusal_harmless=_required_rate(k0, "refusal_harmless", attack_json),
        refusal_harmful_ci=_ci(k0.get("refusal_harmful_ci"), attack_json, "refusal_harmful_ci"),
        refusal_harmless_ci=_ci(k0.get("refusal_harmless_ci"), attack_json, "refusal_harmless_ci"),
        attack_rank=rank,
        censored=censored,
        k_max=int(k_max),
        threshold=_number(attack.get("threshold")),
        match=None if match is None else str(match),
        lambda_mean=_number(info.get("lambda_mean")) if match in (None, "mean") else None,
        lambda_cov=_number(info.get("lambda_cov")) if match in (None, "cov") else None,
        kd_T=_number(info.get("kd_T")) if kd_on or info.get("kd_lambda") is None else None,
        kd_lambda=_number(info.get("kd_lambda")),
        linear_probe_acc=_probe(k0_flat, "linear"),
        mlp_probe_acc=_probe(k0_flat, "mlp"),
        mlflow_run_id=None if info.get("mlflow_run_id") is None else str(info["mlflow_run_id"]),
        curve=[r for r in curve if isinstance(r, dict)],
    )


def _sort_key(row: ModelRow) -> tuple:
    if row.is_reference:
        ref = REFERENCE_ORDER.index(row.name) if row.name in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (0, ref, row.name)
    # most robust first; among equals, the one that keeps more of its K=0 refusal
    return (1, -row.attack_rank, -row.refusal_harmful, row.name)


def collect_rows(study_dir: str | Path) -> tuple[list[ModelRow], list[str]]:
    """All finished models of a study (reference models first, then trials by robustness) and the
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
    rows = sorted((read_model(paths, name) for name in finished), key=_sort_key)
    return rows, missing
