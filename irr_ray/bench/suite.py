"""``irr-ray bench attacks``: seconds per budget step of every attack of the suite, side by side.

For each model — the organism's instruct model (``--organism-dir``) and a random 4-layer model of
Llama-3.2-1B's width (CPU, vocabulary cut) — every attack runs its default budget schedule
(``--quick``: its first budget only) on the same prompts, on one thread:

* **attack s** — the attack's own work for that budget (extraction, optimisation, trials, training);
* **eval s** — the behavioural evaluation of the attacked model (greedy replies, judge, outcomes),
  identical for every attack;
* **forwards** — the model forwards the attack ran, counted by a hook (rows × tokens; a forward
  with gradients counts as 3 forward-equivalents: forward + backward);
* **1B TFLOP** — the same forwards counted in matmul FLOPs at Llama-3.2-1B's full shape (16
  blocks, vocabulary 128,256; :func:`irr_ray.bench.attack.forward_flops`) — what the step would cost
  there with these prompt lengths (the organism's prompts are short; real prompts are longer).

``dim`` is timed per K through the same loop as the study (:func:`run_iterated_attack`). The total
for the organism is the suite's wall time on one model (target: ≤ 5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.behaviour import BehaviourEvaluator
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids, run_iterated_attack
from irr_ray.attack.prompts import PromptPair, PromptSets
from irr_ray.attack.suite import attack_class
from irr_ray.attack.suite.base import AttackContext
from irr_ray.bench.attack import LLAMA_1B, forward_flops, organism_prompts, random_llama
from irr_ray.core.outcomes import DegenerateRules
from irr_ray.judges.base import SubstringRefusalJudge, model_judge_phrases

SUITE = ("orthogonalize", "rdo", "optuna_abliteration", "finetune")


class ForwardLog:
    """Counts the model's forwards: (rows, tokens, with gradients)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    @contextmanager
    def on(self, model: torch.nn.Module) -> Iterator[ForwardLog]:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is not None:
                self.calls.append((int(ids.shape[0]), int(ids.shape[1]), torch.is_grad_enabled()))

        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    def take(self) -> list[tuple[int, int, bool]]:
        out, self.calls = self.calls, []
        return out


def llama_1b_tflop(calls: list[tuple[int, int, bool]]) -> float:
    """The logged forwards at Llama-3.2-1B's full shape (LM head on every row's last position)."""
    cfg = argparse.Namespace(**{**LLAMA_1B, "head_dim": LLAMA_1B.get("head_dim")})
    total = sum(forward_flops(cfg, rows, seq, cfg.num_hidden_layers, rows) * (3 if grad else 1)
                for rows, seq, grad in calls)
    return total / 1e12


def forward_equivalents(calls: list[tuple[int, int, bool]]) -> int:
    return sum(3 if grad else 1 for _, _, grad in calls)


def _context(model: Any, tok: Any, cfg: AttackConfig, sets: PromptSets, base_model: str | None,
             work: Path, judge: Any) -> AttackContext:
    _, ids = refusal_token_ids(model, tok, cfg.refusal_tokens)
    return AttackContext(model=model, tokenizer=tok, prompts=sets, cfg=cfg, refusal_ids=ids, work_dir=work,
                         seed=cfg.seed, base_model=base_model, judge=judge)


def bench_model(name: str, model: Any, tok: Any, cfg: AttackConfig, sets: PromptSets, base_model: str | None,
                work: Path, quick: bool, attacks: tuple[str, ...]) -> dict[str, Any]:
    judge = SubstringRefusalJudge(extra_phrases=model_judge_phrases(getattr(model, "name_or_path", None)))
    evaluator = BehaviourEvaluator(model, tok, judge, sets.eval, cfg.generation, refusal_token_ids(model, tok, None)[1],
                                   rules=DegenerateRules(**cfg.degenerate.model_dump()))
    log = ForwardLog()
    rows: list[dict[str, Any]] = []
    with log.on(model):
        t = time.perf_counter()
        evaluator.run(None)  # K=0 calibrates the degenerate rule, as in a study
        k0_s = time.perf_counter() - t
        log.take()
        if "dim" in attacks:
            dim_cfg = cfg.model_copy(update={"k_max": 1 if quick else 2})
            t = time.perf_counter()
            result = run_iterated_attack(model, tok, sets, dim_cfg, evaluator)
            calls = log.take()
            total = time.perf_counter() - t
            for timing in result.timings:
                attack_s = timing["extract_s"] + timing["score_s"]
                rows.append({"model": name, "attack": "dim", "budget": timing["K"], "attack_s": attack_s,
                             "eval_s": timing["eval_s"], "forwards": None, "tflop_1b": None})
            rows[-1]["forwards"] = forward_equivalents(calls)
            rows[-1]["tflop_1b"] = llama_1b_tflop(calls)
            rows[-1]["note"] = f"forwards and FLOPs: all {len(result.timings)} K together ({total:.1f} s)"
        for attack_name in attacks:
            if attack_name == "dim":
                continue
            settings = getattr(cfg, attack_name)
            attack = attack_class(attack_name)(settings)
            ctx = _context(model, tok, cfg, sets, base_model, work / f"{name}-{attack_name}", judge)
            for budget in attack.budgets()[:1] if quick else attack.budgets():
                t = time.perf_counter()
                step = attack.step(ctx, budget)
                attack_s = time.perf_counter() - t
                calls = log.take()
                t = time.perf_counter()
                evaluator.run(intervention=step.intervention)
                eval_s = time.perf_counter() - t
                log.take()
                rows.append({"model": name, "attack": attack_name, "budget": budget, "axis": attack.budget_axis,
                             "attack_s": attack_s, "eval_s": eval_s, "forwards": forward_equivalents(calls),
                             "tflop_1b": llama_1b_tflop(calls)})
                print(_line(rows[-1]), flush=True)
    return {"model": name, "k0_eval_s": k0_s, "rows": rows,
            "suite_s": k0_s + sum(r["attack_s"] + r["eval_s"] for r in rows)}


def _line(r: dict[str, Any]) -> str:
    fw = "-" if r.get("forwards") is None else str(r["forwards"])
    tf = "-" if r.get("tflop_1b") is None else f"{r['tflop_1b']:.2f}"
    return (f"{r['model'][:28]:<28} {r['attack']:<20} {r['budget']:>6} {r['attack_s']:>9.1f} {r['eval_s']:>7.1f} "
            f"{fw:>9} {tf:>10}")


def _sets(extract_n: int, score_n: int, eval_n: int, parquet: Path | None) -> PromptSets:
    extract, rest = organism_prompts(extract_n, score_n + eval_n, parquet=parquet)
    score = PromptPair(rest.harmful[:score_n], rest.harmless[:score_n])
    held = PromptPair(rest.harmful[score_n:], rest.harmless[score_n:])
    return PromptSets(extract=extract, score=score, probe=extract, eval=held)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from irr_ray.models.loading import load_model, load_tokenizer

    torch.set_num_threads(1)
    quick = bool(args.quick)
    attacks = ("dim", *SUITE)
    results = []
    print(f"{'model':<28} {'attack':<20} {'budget':>6} {'attack s':>9} {'eval s':>7} {'forwards':>9} "
          f"{'1B TFLOP':>10}")
    with tempfile.TemporaryDirectory(prefix="irr-bench-suite-") as tmp:
        if args.organism_dir:
            root = Path(args.organism_dir).expanduser()
            cfg = AttackConfig(extract_n=64, score_n=32, eval_n=40,
                               generation={"max_new_tokens": 24, "batch_size": 40})
            sets = _sets(cfg.extract_n, cfg.score_n, cfg.eval_n, root / "data" / "wildguardmix.parquet")
            model = load_model(str(root / "instruct"), device="cpu").requires_grad_(False).eval()
            results.append(bench_model("organism instruct", model, load_tokenizer(str(root / "instruct")), cfg,
                                       sets, str(root / "base"), Path(tmp), quick, attacks))
        shape = {**LLAMA_1B, "num_hidden_layers": 4, "vocab_size": 8192}
        if quick:
            shape.update(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2)
        model, tok = random_llama(shape, "cpu", torch.float32)
        cfg = AttackConfig(extract_n=16, score_n=8, eval_n=8, refusal_tokens=["I"],
                           generation={"max_new_tokens": 8, "batch_size": 8},
                           rdo={"budgets": [1], "steps": 4}, optuna_abliteration={"budgets": [4], "startup_trials": 2,
                                                                                  "n_prompts": 8},
                           finetune={"budgets": [2], "n_examples": 8, "batch_size": 4, "answers": "base"})
        sets = _sets(cfg.extract_n, cfg.score_n, cfg.eval_n, None)
        model.name_or_path = ""
        path = Path(tmp) / "random-base"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        results.append(bench_model(f"random 4-layer, width {shape['hidden_size']}", model, tok, cfg, sets,
                                   str(path), Path(tmp), True, attacks))
    for r in results:
        print(f"{r['model']}: K=0 evaluation {r['k0_eval_s']:.1f} s; the suite's budgets above + K=0: "
              f"{r['suite_s']:.0f} s on one thread")
    print("random model: small budgets (rdo 4 steps, 4 Optuna trials, 2 finetune steps); seconds per budget step "
          "scale with them. 1B TFLOP: the logged forwards at Llama-3.2-1B's shape.")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0
