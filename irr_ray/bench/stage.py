"""``irr-ray bench attack --stage``: a study's whole attack stage, plain path vs fast path, side by side.

The attack work of every model of a finished study (its sweep checkpoints, ``original`` = the source
model and ``base``; the models ``irr-ray attack-all`` attacks) is run twice in one process, with

* **plain** — today's generation and separate forwards: ``generation.engine: hf-generate``,
  ``generation.reuse_prefill: false`` (exactly the behaviour before the fast path existed);
* **fast** — the study's own settings, whose defaults are the shrinking decode loop and prompt
  reuse (:mod:`irr_ray.attack.behaviour`: first-token probabilities from the generation's prefill,
  reply NLLs from the reference's prompt KV cache).

Both sides run exact scoring (the production ``fast`` scorer), the same prompts, judge and seeds.
Per model the sides alternate (plain first for even models, fast first for odd ones), so load drift
on a shared machine hits both alike; everything runs on one torch thread, as an attack task with
``resources.cpu: 1`` does. Timed: the source model's K=0 baseline (once per side, as ``attack-all``
computes it), each model's ``dim`` attack (:func:`irr_ray.attack.run.attack_model`: load, K=0
evaluation and probes, then the iterations) and, with ``--suite``, each attack of ``attack.suite``
after it (:func:`irr_ray.attack.suite.runner.run_suite_attack`), split into K=0 / setup,
extraction + scoring (the attack's own work) and behavioural evaluation from each result's
``attack_log.json``. The sides must agree: the same chosen (layer, position) at every K, the same
per-K refused / complied / degenerate shares of both classes, verdicts and stop reasons; the float
fields (first-token refusal probability, KL, reply NLL) are reported as their largest difference.

``--floor`` adds a third run of the fast side, untimed, with every task's matrix-multiply FLOPs
counted (:mod:`irr_ray.bench.floor`), and this core's peak matmul rate: the FLOP floor of each group
of tasks, and plain ÷ floor, the largest speed-up over the plain path that any path doing the fast
side's FLOPs could reach even if nothing but its matmuls cost time.

Seconds are task time (one core each); ``attack-all`` runs ``ray.num_cpus`` such tasks at once,
which divides both sides' elapsed time alike. No Ray and no MLflow here: those are the same on
both sides.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.config import AttackConfig
from irr_ray.contracts import AttackDoc

SHARE_FIELDS = tuple(f"{kind}_{cls}" for kind in ("refusal", "complied", "degenerate") for cls in ("harmful", "harmless"))
FLOAT_FIELDS = ("p_refusal_harmful", "p_refusal_harmless", "kl_harmless", "reply_nll_harmful", "reply_nll_harmless")
CHOICE_FIELDS = ("layer", "position", "survivors", "fallback")


def plain_config(cfg: AttackConfig) -> AttackConfig:
    """``cfg`` with today's behavioural evaluation: HF ``generate``, separate first-token and
    prompt + reply forwards (everything else unchanged)."""
    gen = cfg.generation.model_copy(update={"engine": "hf-generate", "reuse_prefill": False})
    return cfg.model_copy(update={"generation": gen})


def study_attack_config(study_dir: Path, config: str | None) -> AttackConfig:
    """The attack section of ``config`` (default: the study's ``config.yaml``, else the organism
    default study ``experiments/organism.yaml``), one torch thread per task."""
    from irr_ray.config import read_yaml

    path = Path(config) if config else study_dir / "config.yaml"
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / "experiments" / "organism.yaml"
    section = read_yaml(path).get("attack", {}) or {}
    cfg = AttackConfig.model_validate(section)
    return cfg.model_copy(update={"torch_threads": 1, "resources": cfg.resources.model_copy(update={"cpu": 1})})


def _log(path: Path) -> dict[str, Any]:
    f = path / "attack_log.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _phases(out: Path, wall: float) -> dict[str, float]:
    """Seconds of one task by part, from its ``attack_log.json``: ``work`` (extraction + scoring, or
    the suite attack's own step), ``eval`` (behavioural evaluation at K ≥ 1 / budgets), ``k0`` (the
    K=0 evaluation with probes, dim only) and ``other`` (loading, setup, writing)."""
    log = _log(out)
    timings = log.get("timings", [])
    work = sum(t.get("extract_s", 0.0) + t.get("score_s", 0.0) + t.get("attack_s", 0.0) for t in timings)
    ev = sum(t.get("eval_s", 0.0) for t in timings)
    k0 = float(log.get("k0_s", 0.0) or 0.0)
    return {"wall": wall, "work": work, "eval": ev, "k0": k0, "other": max(0.0, wall - work - ev - k0)}


def _compare(a: AttackDoc, b: AttackDoc) -> tuple[list[str], float]:
    """(differences in choices / shares / verdict, largest difference of the float fields)."""
    diffs: list[str] = []
    if len(a.curve) != len(b.curve):
        diffs.append(f"curve length {len(a.curve)} vs {len(b.curve)}")
    worst = 0.0
    for ra, rb in zip(a.curve, b.curve, strict=False):
        da, db = ra.model_dump(), rb.model_dump()
        for key in (*SHARE_FIELDS, *CHOICE_FIELDS):
            if da.get(key) != db.get(key):
                diffs.append(f"K={da['K']} {key}: {da.get(key)} vs {db.get(key)}")
        for key in FLOAT_FIELDS:
            x, y = da.get(key), db.get(key)
            if x is None or y is None or x != x or y != y:  # noqa: PLR0124 (NaN)
                if (x is None) != (y is None):
                    diffs.append(f"K={da['K']} {key}: {x} vs {y}")
                continue
            worst = max(worst, abs(float(x) - float(y)))
    if a.verdict.verdict != b.verdict.verdict or a.verdict.decided_at_k != b.verdict.decided_at_k:
        diffs.append(f"verdict {a.verdict.verdict}@{a.verdict.decided_at_k} vs {b.verdict.verdict}@"
                     f"{b.verdict.decided_at_k}")
    if a.stop_reason != b.stop_reason:
        diffs.append(f"stop {a.stop_reason} vs {b.stop_reason}")
    return diffs, worst


def run_stage(args: argparse.Namespace) -> int:
    """``irr-ray bench attack --stage --study-dir DIR`` (module docstring)."""
    from irr_ray.attack.run import K0_JSON, SourceBaseline, progress_dir, source_baseline
    from irr_ray.attack.taskgroup import TRIAL, discover_models
    from irr_ray.study import StudyPaths

    if not args.study_dir:
        print("bench attack --stage: pass --study-dir (a finished study: checkpoints/, data/, organism/)")
        return 2
    torch.set_num_threads(1)
    study = StudyPaths.at(Path(args.study_dir).expanduser().resolve())
    organism = Path(args.organism_dir).expanduser().resolve() if args.organism_dir else study.root / "organism"
    source, base = str(organism / "instruct"), str(organism / "base")
    fast = study_attack_config(study.root, getattr(args, "stage_config", None))
    sides = {"plain": plain_config(fast), "fast": fast}
    specs = discover_models(study, source, base)
    if args.models:
        wanted = set(args.models.split(","))
        specs = [s for s in specs if s.name in wanted]
    suite = [a for a in fast.suite if a != "dim"] if args.suite else []
    print(f"bench attack --stage: {len(specs)} models × (dim{''.join(' + ' + a for a in suite)}), "
          f"k_max {fast.k_max}, stop_below_threshold {fast.stop_below_threshold}, eval_n {fast.eval_n}, "
          f"{fast.generation.max_new_tokens} new tokens, batch {fast.generation.batch_size}; one torch thread",
          flush=True)

    root = Path(tempfile.mkdtemp(prefix="irr-ray-stage-"))
    seconds: dict[str, dict[str, dict[str, float]]] = {s: {} for s in sides}
    docs: dict[str, dict[str, AttackDoc]] = {s: {} for s in sides}
    try:
        baselines: dict[str, SourceBaseline] = {}
        for side, cfg in sides.items():  # the source's K=0 baseline, where the original's attack picks it up
            out = root / side / "attacks"
            t0 = time.perf_counter()
            baselines[side] = source_baseline(source, study.data, cfg, progress_dir(out / "original") / K0_JSON,
                                               source)
            seconds[side]["source-k0"] = {"wall": time.perf_counter() - t0, "work": 0.0, "eval": 0.0,
                                          "k0": time.perf_counter() - t0, "other": 0.0}
        for i, spec in enumerate(specs):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for side in order:
                src = baselines[side] if spec.role == TRIAL else None
                for name, out, task in _model_tasks(spec, root / side / "attacks", suite, study.data, source, base,
                                                    sides[side], src):
                    t0 = time.perf_counter()
                    docs[side][name] = task()
                    seconds[side][name] = _phases(out, time.perf_counter() - t0)
            p, f = seconds["plain"][spec.name], seconds["fast"][spec.name]
            print(f"  {spec.name:<28} dim: plain {p['wall']:6.2f}s  fast {f['wall']:6.2f}s  "
                  f"({p['wall'] / max(f['wall'], 1e-9):.2f}x)  K={len(docs['fast'][spec.name].curve) - 1}", flush=True)
        floor = (_count_floor(root / "counted", specs, suite, study, source, base, fast)
                 if getattr(args, "floor", False) else None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _report(args, specs, suite, seconds, docs, floor)


def _model_tasks(spec: Any, attacks: Path, suite: list[str], data: Path, source: str, base: str,
                 cfg: AttackConfig, src: Any) -> Iterator[tuple[str, Path, Callable[[], AttackDoc]]]:
    """One model's tasks in order, as (task name, output dir, run it): its ``dim`` attack, then each
    attack of ``suite`` (which reads dim's directions from its output)."""
    from irr_ray.attack.run import attack_model
    from irr_ray.attack.suite.runner import run_suite_attack

    dim_dir = attacks / spec.name
    yield spec.name, dim_dir, lambda: attack_model(spec.path, data, cfg, dim_dir, judge_model=source, source=src)
    for attack in suite:
        out = dim_dir / attack
        yield f"{spec.name}/{attack}", out, lambda attack=attack, out=out: run_suite_attack(
            attack, spec.path, data, cfg, out, judge_model=source, source=src, base_model=base, dim_dir=dim_dir)


def _count_floor(root: Path, specs: list[Any], suite: list[str], study: Any, source: str, base: str,
                 cfg: AttackConfig) -> dict[str, Any]:
    """``--floor``: the fast side once more, untimed, each task under
    :class:`~irr_ray.bench.floor.CountedFlops`, and this core's peak matmul rate
    (:mod:`irr_ray.bench.floor`): matmul GFLOP per task, kernel seconds (matmul / other) over all
    tasks, and the peak in GFLOP/s."""
    from transformers import AutoConfig

    from irr_ray.attack.run import K0_JSON, progress_dir, source_baseline
    from irr_ray.attack.taskgroup import TRIAL
    from irr_ray.bench.floor import CountedFlops, peak_matmul_gflops

    print("counting the fast side's matmul FLOPs (a third, untimed run) ...", flush=True)
    gflop: dict[str, float] = {}
    kernels = {"matmul": 0.0, "other": 0.0}

    def counted(name: str, c: CountedFlops) -> None:
        gflop[name] = c.flops / 1e9
        for kind, sec in c.kernel_seconds.items():
            kernels[kind] += sec

    attacks = root / "attacks"
    with CountedFlops() as c:
        baseline = source_baseline(source, study.data, cfg, progress_dir(attacks / "original") / K0_JSON, source)
    counted("source-k0", c)
    for spec in specs:
        src = baseline if spec.role == TRIAL else None
        for name, _, task in _model_tasks(spec, attacks, suite, study.data, source, base, cfg, src):
            with CountedFlops() as c:
                task()
            counted(name, c)
        print(f"  {spec.name:<28} {sum(v for k, v in gflop.items() if k.split('/')[0] == spec.name):8.1f} GFLOP",
              flush=True)
    mc = AutoConfig.from_pretrained(source)
    peak, shape = peak_matmul_gflops(int(mc.hidden_size), int(getattr(mc, "intermediate_size", 4 * mc.hidden_size)))
    return {"gflop": gflop, "peak_gflops": peak, "peak_shape": list(shape), "kernels": kernels}


def _report(args: argparse.Namespace, specs: list[Any], suite: list[str], seconds: dict[str, Any],
            docs: dict[str, dict[str, AttackDoc]], floor: dict[str, Any] | None = None) -> int:
    tasks = list(seconds["plain"])
    diffs: dict[str, list[str]] = {}
    worst = 0.0
    for name in docs["plain"]:
        d, w = _compare(docs["plain"][name], docs["fast"][name])
        worst = max(worst, w)
        if d:
            diffs[name] = d
    parts = ("k0", "work", "eval", "other")

    def total(side: str, attack: str | None = None) -> dict[str, float]:
        keys = [t for t in tasks if attack is None or _attack_of(t) == attack]
        return {p: sum(seconds[side][t][p] for t in keys) for p in ("wall", *parts)}

    print("\nattack stage, task seconds (one core each), plain vs fast:")
    print(f"{'tasks':<22} {'plain':>9} {'fast':>9} {'ratio':>6}   plain: k0 / work / eval / other   "
          f"fast: k0 / work / eval / other")
    groups = ["source-k0", "dim", *suite]
    rows = []
    for g in [*groups, None]:
        p, f = total("plain", g), total("fast", g)
        label = "all" if g is None else g
        rows.append({"tasks": label, "plain": p, "fast": f, "ratio": p["wall"] / max(f["wall"], 1e-9)})
        print(f"{label:<22} {p['wall']:>8.1f}s {f['wall']:>8.1f}s {p['wall'] / max(f['wall'], 1e-9):>5.2f}x   "
              f"{' / '.join(f'{p[k]:.1f}' for k in parts):<31}   {' / '.join(f'{f[k]:.1f}' for k in parts)}")
    same = not diffs
    print(f"\nidentical choices, per-K shares, verdicts and stop reasons on every task: {same}; "
          f"largest float difference (p_refusal, KL, reply NLL): {worst:.2g}")
    for name, d in diffs.items():
        print(f"  DIFFERS {name}: " + "; ".join(d[:5]))
    if floor is not None:
        floor["rows"] = _print_floor(tasks, groups, seconds, floor)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"models": [s.name for s in specs], "suite": suite, "seconds": seconds,
                                              "totals": rows, "identical": same, "differences": diffs,
                                              "max_float_difference": worst, "floor": floor}, indent=2) + "\n")
    return 0 if same else 1


def _attack_of(task: str) -> str:
    if task == "source-k0":
        return task
    return task.split("/", 1)[1] if "/" in task else "dim"


def _print_floor(tasks: list[str], groups: list[str], seconds: dict[str, Any], floor: dict[str, Any]) -> list[dict]:
    """The floor table (:mod:`irr_ray.bench.floor`): per group of tasks, the fast side's matmul GFLOP,
    the seconds they need at the measured peak, and plain ÷ floor, the largest speed-up over the
    plain path of any path doing those FLOPs."""
    peak = float(floor["peak_gflops"])
    print(f"\nFLOP floor: the fast side's matmul FLOPs at this core's peak, {peak:.1f} GFLOP/s "
          f"(one thread, float32, best at m,k,n = {tuple(floor['peak_shape'])}):")
    print(f"{'tasks':<22} {'GFLOP':>9} {'floor':>8} {'plain':>9} {'fast':>9} {'fast÷floor':>10} {'plain÷floor':>11}")
    rows = []
    for g in [*groups, None]:
        keys = [t for t in tasks if g is None or _attack_of(t) == g]
        gf = sum(floor["gflop"].get(t, 0.0) for t in keys)
        p = sum(seconds["plain"][t]["wall"] for t in keys)
        f = sum(seconds["fast"][t]["wall"] for t in keys)
        fl = gf / peak
        label = "all" if g is None else g
        rows.append({"tasks": label, "gflop": gf, "floor_s": fl, "plain_s": p, "fast_s": f})
        print(f"{label:<22} {gf:>9.1f} {fl:>7.1f}s {p:>8.1f}s {f:>8.1f}s {f / max(fl, 1e-9):>9.2f}x "
              f"{p / max(fl, 1e-9):>10.2f}x")
    k = floor["kernels"]
    scale = 1.0 + k["other"] / max(k["matmul"], 1e-9)
    total = rows[-1]
    eager = total["floor_s"] * scale
    print(f"\nkernel seconds of the fast side (every task, timed where dispatched): matmul {k['matmul']:.1f}s, "
          f"other computing kernels (norms, activations, rotary, adds, projections, copies) {k['other']:.1f}s "
          f"= {scale - 1:.2f} × matmul")
    print(f"eager floor (the same kernels, nothing else): {total['floor_s']:.1f}s × {scale:.2f} = {eager:.1f}s; "
          f"plain ÷ eager floor = {total['plain_s'] / max(eager, 1e-9):.2f}x, the most any eager path doing "
          f"these FLOPs could gain")
    rows.append({"tasks": "eager floor", "scale": scale, "floor_s": eager, "plain_s": total["plain_s"],
                 "fast_s": total["fast_s"]})
    return rows
