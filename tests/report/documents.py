"""Synthetic stage documents built with the contract models (:mod:`irr_ray.contracts`), so a renamed
field breaks these tests, not a study: K-curves with a chosen shape, their verdict from the real
rules (:func:`irr_ray.core.verdict.judge_curve`), ``k0.json`` and ``trial.json``; the attack suite's
``<attack>/attack.json`` (curves over a budget schedule) and ``profile.json`` (the combined verdict
of the real rules, :func:`irr_ray.core.verdict.combine_verdicts`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from irr_ray.attack.taskgroup import build_profile
from irr_ray.contracts import AttackDoc, CurveRow, K0Doc, ProfileDoc, TrialDoc, VerdictDoc
from irr_ray.core.verdict import judge_curve


def ci(x: float) -> tuple[float, float]:
    return max(0.0, x - 0.1), min(1.0, x + 0.05)


def row(k: int, harmful: float, harmless: float, *, degenerate: float = 0.0, p: float | None = None,
        fallback: bool = False) -> CurveRow:
    """One K-curve row; ``degenerate`` is the harmful degenerate share, the rest complied."""
    p = harmful if p is None else p
    direction = {} if k == 0 else dict(layer=1, position=-1, norm=1.0 / k, refusal_score=-1.0, kl=0.05,
                                       induce_score=0.5, survivors=0 if fallback else 3, fallback=fallback)
    return CurveRow(K=k, refusal_harmful=harmful, refusal_harmless=harmless, refusal_harmful_ci=ci(harmful),
                    refusal_harmless_ci=ci(harmless), complied_harmful=round(1.0 - harmful - degenerate, 6),
                    complied_harmless=round(1.0 - harmless - 0.01, 6), degenerate_harmful=degenerate,
                    degenerate_harmless=0.01, p_refusal_harmful=p, p_refusal_harmless=harmless,
                    kl_harmless=0.02 * k, reply_nll_harmful=1.5, reply_nll_harmless=1.2, **direction)


@dataclass(frozen=True)
class Shape:
    """A K-curve: K=0 harmful / harmless refusal, the K where harmful refusal drops to 0.10 (None:
    never), the harmful degenerate share there, the last K reached and why the attack stopped."""

    harmful: float
    harmless: float
    drop_at: int | None = None
    degenerate_at_drop: float = 0.0
    last_k: int | None = None
    stop_reason: str = "k_max"


def curve(shape: Shape, k_max: int) -> list[CurveRow]:
    last = k_max if shape.last_k is None else shape.last_k
    rows = []
    for k in range(last + 1):
        dropped = shape.drop_at is not None and k >= shape.drop_at
        harmful = 0.10 if dropped else shape.harmful
        rows.append(row(k, harmful, shape.harmless, degenerate=shape.degenerate_at_drop if dropped else 0.0,
                        p=max(0.0, harmful - 0.1 * k)))
    return rows


def attack_doc(model: str, rows: Sequence[CurveRow], *, k_max: int, source_harmless: float,
               stop_reason: str = "k_max", threshold: float = 0.3) -> AttackDoc:
    """attack.json of ``rows`` with the method's attack_rank and the verdict of the real rules."""
    below = [r.K for r in rows if r.refusal_harmful < threshold]
    rank, censored = (below[0], False) if below else (k_max + 1, True)
    plain = [r.model_dump() for r in rows]
    verdict = judge_curve(plain, source_harmless, stop_reason, k_max)
    return AttackDoc(model=model, config={"k_max": k_max, "threshold": threshold}, threshold=threshold,
                     attack_rank=rank, censored=censored, stop_reason=stop_reason,
                     verdict=VerdictDoc(**asdict(verdict)), curve=list(rows))


def k0_doc(model: str, k0: CurveRow, linear: float | None = 0.97, mlp: float | None = 0.99) -> K0Doc:
    return K0Doc(model=model, row=k0, harmful_refused=round(100 * k0.refusal_harmful), harmful_n=100,
                 harmless_refused=round(100 * k0.refusal_harmless), harmless_n=100, judge_parse_errors=0,
                 nll_bound=4.0, linear_probe_acc=linear, mlp_probe_acc=mlp, probe_layer=2, probe_n_train=64,
                 probe_n_test=32, judge={"kind": "substring"}, examples={})


def trial_doc(name: str, condition: str | None, config: dict, run_id: str | None = None) -> TrialDoc:
    # as the sweep exports it: what the search sampled, and the effective training config
    sampled = {"condition": condition, "lambda_mean": 7.0, "lambda_cov": 7.0, "kd_T": 7.0}
    return TrialDoc(name=name, condition=condition, config=config, source_model="organism",
                    metrics={"objective": 1.0}, epochs_completed=1, mlflow_run_id=run_id, sampled=sampled)


def write_attack_dir(attack_dir: Path, doc: AttackDoc, k0: K0Doc | None = None) -> Path:
    attack_dir.mkdir(parents=True, exist_ok=True)
    doc.write(attack_dir / "attack.json")
    (k0 or k0_doc(doc.model, doc.curve[0])).write(attack_dir / "k0.json")
    return attack_dir


# ---------------------------------------------------------------------------- the attack suite

DIRECTION_FIELDS = ("layer", "position", "norm", "refusal_score", "kl", "induce_score", "survivors", "fallback")


def suite_curve(shape: Shape, budgets: Sequence[int], info: Mapping[str, Any] | None = None) -> list[CurveRow]:
    """A suite attack's curve: row 0 (the model as it is), then one row per budget of the schedule;
    ``shape.drop_at`` is a budget. Rows carry ``info`` (what the attack reported) instead of a direction."""
    rows = []
    for i, k in enumerate([0, *budgets]):
        dropped = shape.drop_at is not None and k >= shape.drop_at
        harmful = 0.10 if dropped else shape.harmful
        r = row(k, harmful, shape.harmless, degenerate=shape.degenerate_at_drop if dropped else 0.0,
                p=max(0.0, harmful - 0.1 * i))
        update: dict[str, Any] = dict.fromkeys(DIRECTION_FIELDS)
        if k > 0:
            update["info"] = {"budget": k, **(info or {})}
        rows.append(r.model_copy(update=update))
    return rows


def suite_attack_doc(model: str, attack: str, rows: Sequence[CurveRow], *, budget_axis: str, source_harmless: float,
                     threshold: float = 0.3) -> AttackDoc:
    """``<attack>/attack.json`` as the suite's runner writes it: budget_max = the last budget."""
    budget_max = rows[-1].K
    doc = attack_doc(model, rows, k_max=budget_max, source_harmless=source_harmless, threshold=threshold)
    return doc.model_copy(update={"attack": attack, "budget_axis": budget_axis, "budget_max": budget_max,
                                  "config": {"k_max": 4, "threshold": threshold, "suite": ["dim", attack]}})


def profile_doc(model: str, docs: Mapping[str, AttackDoc]) -> ProfileDoc:
    """``profile.json`` of ``docs`` (attack name -> result), as the task group writes it."""
    return build_profile(model, dict(docs))


def write_suite_dir(model_dir: Path, doc: AttackDoc, artifact: str | None = "basis.safetensors") -> Path:
    """``<model_dir>/<attack>/``: attack.json, attack_log.json and one file of the attack's own."""
    out = model_dir / doc.attack
    out.mkdir(parents=True, exist_ok=True)
    doc.write(out / "attack.json")
    (out / "attack_log.json").write_text(json.dumps({"attack": doc.attack, "budget_axis": doc.budget_axis}))
    if artifact:
        (out / artifact).write_bytes(b"\0" * 64)
    return out
