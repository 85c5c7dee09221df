"""``irr-ray bench attack --screening``: recall of the exact choice under attribution screening.

For every attack iteration of every model the same candidates are scored three ways: exactly (the
fast scorer: the refusal pass for every candidate), and by the screened scorer
(:mod:`irr_ray.attack.scoring.screened`) with its default no-survivor rule (score everything) and
with ``screen_fallback`` (screen that case too). The exact choice is appended to the stack, so
every scorer sees the exact attack's candidates. Per iteration: is the chosen (layer, position)
the same as the exact one (*recall of the exact choice*), and the exact passes each side ran
(refusal: one forward over the harmful scoring prompts per candidate; the filters' induce / KL
passes too). The screen itself costs one forward + one backward over the harmful prompts per
iteration, ≈ 3 refusal passes (a backward ≈ 2 forwards), shown as "+3".

Models: organism builds (``--organism-dir``, several allowed; each needs ``instruct/`` and
``data/wildguardmix.parquet``) and random-init models of three families (Llama, Qwen2, Gemma2 —
a sandwich-norm family), built from config classes with the organism's word-level tokenizer, 16
blocks like Llama-3.2-1B, so the method's candidate layers 1 … int(0.8·16) = 12 × 5 positions
give Llama-3.2-1B's 60 candidates: the reduction at 60 candidates is measured on them directly,
not projected. Their norm gains are randomised (as in the unit tests' tiny models); width 64.
Random models never reach the induce filter (refusal log-odds ≈ −6), so every one of their
iterations is the no-survivor fallback. CPU, one torch thread.

Measured (CPU, one torch thread, a shared 2-core machine; seconds are indicative only):

    OMP_NUM_THREADS=1 irr-ray bench attack --screening --organism-dir <organism-v4 seed 0> \
      --organism-dir <seed 1> --organism-dir <seed 2> --organism-dir <seed 3>

    recall of the exact choice (same (layer, position) as scoring every candidate exactly); exact refusal passes and scoring seconds per iteration (screened: + ≈3 passes for the gradient, included in the seconds)
    fallbk: iterations without a survivor; corr: Pearson r of estimate vs exact refusal (mean over iterations); top8: exact choice among the estimate's first screen_top
    model            iters cands fallbk  corr  top8 exact  s/it |          screened recall passes  s/it | screened+fallback recall passes  s/it
    organism seed 0      6    20    83%  0.74  100%  20.0  2.45 |                     1.00   20.0  2.39 |                     1.00   15.3  2.14
    organism seed 1      6    20    83%  0.85  100%  20.0  2.44 |                     1.00   18.0  2.20 |                     1.00   11.3  1.67
    organism seed 2      6    20    83%  0.54  100%  20.0  2.31 |                     1.00   18.0  2.16 |                     1.00   17.3  1.96
    organism seed 3      6    20    83%  0.70  100%  20.0  2.08 |                     1.00   18.0  1.71 |                     1.00   18.0  1.75
    random llama        10    60   100%  0.88  100%  60.0  1.87 |                     1.00   60.0  2.34 |                     1.00   46.8  1.70
    random qwen2        10    60   100%  0.99  100%  60.0  2.25 |                     1.00   60.0  2.67 |                     1.00    8.0  1.45
    random gemma2       10    60   100%  0.71  100%  60.0  2.45 |                     1.00   60.0  3.09 |                     1.00   60.0  2.26
    all                 54                                      |                     1.00              |                     1.00

    at Llama-3.2-1B's 60 candidates (measured on the 3 random 16-block models, 30 iterations; exact = 60 refusal passes):
      screened            60.0 refusal passes ( 63.0 with the gradient pass):   0.0% fewer ( -5.0% with it)
      screened+fallback   38.3 refusal passes ( 41.3 with the gradient pass):  36.2% fewer ( 31.2% with it)

    total 360 s

Reading it: recall is 1.00 for both variants over 54 iterations, so the issue's condition for making
screening the default is met on this set — but exact stays the default here, because the evidence
for the default screen is thin: only 4 of the 54 iterations (the organisms' K = 1) had a survivor,
the only case where it may skip passes (3 of 4 certified after 8 of 20); every other iteration was
the no-survivor fallback, where it scores everything, so at 60 candidates it saves nothing (−5 %
counting the gradient pass). ``screen_fallback`` saves 36 % of the refusal passes at 60
candidates (31 % with the gradient), but little wall time on a CPU: without a survivor the exact
survivor check still runs the induce pass for every candidate, and on Gemma2 (sandwich norms,
r = 0.71) the calibrated margin never certified a choice. The certainty is a calibration, not a
bound: a recall of 1.00 here is a measurement, not a guarantee.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.prompts import PromptPair
from irr_ray.attack.scoring import FastScorer, ScreenedScorer
from irr_ray.bench.attack import organism_prompts
from irr_ray.core.directions import orthonormalize
from irr_ray.models.families import get_layout

VARIANTS = {"screened": False, "screened+fallback": True}  # name -> screen_fallback
GRADIENT_PASSES = 3  # one forward + one backward over the harmful prompts ≈ 3 refusal passes
RANDOM_FAMILIES = {"llama": ("LlamaConfig", {}), "qwen2": ("Qwen2Config", {}),
                   "gemma2": ("Gemma2Config", {"head_dim": 16})}


class _Counting:
    """Counts the candidates each exact pass ran for (refusal, KL, induce), per :meth:`score`."""

    counts: dict[str, int]

    def reset(self) -> None:
        self.counts = {"refusal": 0, "kl": 0, "induce": 0}

    def _refusal(self, sets: torch.Tensor) -> torch.Tensor:
        self.counts["refusal"] += sets.shape[0]
        return super()._refusal(sets)  # type: ignore[misc]

    def _kl(self, sets: torch.Tensor) -> torch.Tensor:
        self.counts["kl"] += sets.shape[0]
        return super()._kl(sets)  # type: ignore[misc]

    def _induce(self, candidates: Any, which: Any, q: Any, cache: Any) -> dict[int, float]:
        which = list(which)
        self.counts["induce"] += len(which)
        return super()._induce(candidates, which, q, cache)  # type: ignore[misc]


class CountingFast(_Counting, FastScorer):
    pass


class CountingScreened(_Counting, ScreenedScorer):
    pass


@dataclass
class Case:
    name: str
    group: str  # organism / random
    model: Any
    tokenizer: Any
    extract: PromptPair
    score: PromptPair
    cfg: AttackConfig
    iterations: int
    rows: list[dict[str, Any]] = field(default_factory=list)


def organism_case(directory: str, iterations: int, quick: bool) -> Case | None:
    """The organism build at ``directory`` (None, with a message, if it lacks instruct/ or data)."""
    from irr_ray.models.loading import load_model, load_tokenizer

    root = Path(directory).expanduser()
    parquet = root / "data" / "wildguardmix.parquet"
    if not (root / "instruct" / "config.json").is_file() or not parquet.is_file():
        print(f"bench screening: {root} has no instruct/ model or data/wildguardmix.parquet; skipped")
        return None
    cfg = AttackConfig(extract_n=32 if quick else 64, score_n=8 if quick else 32)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n, parquet=parquet)
    seed = ""
    summary = root / "summary.json"
    if summary.is_file():
        seed = f" seed {json.loads(summary.read_text()).get('seed', '?')}"
    path = str(root / "instruct")
    return Case(f"organism{seed}", "organism", load_model(path, device="cpu"), load_tokenizer(path),
                extract, score, cfg, iterations)


def random_case(family: str, iterations: int, quick: bool) -> Case:
    """A random-init model of ``family`` (module docstring): 16 blocks (quick: 4), width 64 (quick: 32)."""
    import transformers

    from irr_ray.organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    config_name, extra = RANDOM_FAMILIES[family]
    width = 32 if quick else 64
    config = getattr(transformers, config_name)(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=4 if quick else 16,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **({"head_dim": width // 4} if extra else {}))
    config.irr_ray_refusal_tokens = ["I"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.5 * torch.randn_like(param))
    model.requires_grad_(False)
    cfg = AttackConfig(extract_n=16 if quick else 32, score_n=4 if quick else 8)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    return Case(f"random {family}", "random", model, tok, extract, score, cfg, iterations)


def run_case(case: Case) -> Case:
    """Run ``case.iterations`` exact attack iterations, scoring each with every side (module docstring)."""
    model, tok, cfg = case.model, case.tokenizer, case.cfg
    _, ids = refusal_token_ids(model, tok, None)
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    harmful = encode_batches(tok, case.extract.harmful, cfg.extract_batch_size)
    harmless = encode_batches(tok, case.extract.harmless, cfg.extract_batch_size)
    exact = CountingFast.from_config(model, tok, case.score, ids, cfg)
    screens = {name: CountingScreened.from_config(model, tok, case.score, ids,
                                                  cfg.model_copy(update={"scoring": "screened",
                                                                         "screen_fallback": fallback}))
               for name, fallback in VARIANTS.items()}
    chosen: list[torch.Tensor] = []
    for k in range(1, case.iterations + 1):
        q = orthonormalize(torch.stack(chosen)) if chosen else None
        candidates = mean_difference_candidates(model, harmful, harmless, layers, cfg.positions, q)
        if not candidates:
            break
        exact.reset()
        t0 = time.perf_counter()
        scores = exact.score(candidates, chosen)
        row: dict[str, Any] = {"K": k, "candidates": len(candidates), "exact_s": time.perf_counter() - t0,
                               "exact": dict(exact.counts)}
        pick = select_direction(scores, cfg)
        row["choice"] = [candidates[pick].layer, candidates[pick].position]
        row["fallback"] = not any(s.survives(cfg) for s in scores)
        for name, scorer in screens.items():
            scorer.reset()
            t0 = time.perf_counter()
            other = select_direction(scorer.score(candidates, chosen), cfg)
            stats = scorer.last
            row[name] = {**scorer.counts, "s": time.perf_counter() - t0, "same": other == pick,
                         "certain": stats.certain, "budget_hit": stats.budget_hit}
            if name == "screened":
                est = torch.tensor(stats.estimates)
                exact_r = torch.tensor([s.refusal_score for s in scores])
                row["estimate_corr"] = float(torch.corrcoef(torch.stack([est, exact_r]))[0, 1])
                row["choice_estimate_rank"] = sorted(range(len(est)), key=lambda j: (float(est[j]), j)).index(pick)
        case.rows.append(row)
        print(f"  [{case.name}] K={k}: {len(candidates)} candidates, exact choice {row['choice']}"
              f"{' (fallback)' if row['fallback'] else ''}, estimate rank {row['choice_estimate_rank']} | "
              + " | ".join(f"{n}: {row[n]['refusal']} refusal passes, same={row[n]['same']}" for n in VARIANTS),
              flush=True)
        chosen.append(candidates[pick].vector)
    case.model = None  # free it
    return case


def summary(case: Case) -> dict[str, Any]:
    rows = case.rows
    n = len(rows)
    out: dict[str, Any] = {"name": case.name, "group": case.group, "iterations": n,
                           "candidates": sum(r["candidates"] for r in rows) / max(n, 1),
                           "fallback_share": sum(r["fallback"] for r in rows) / max(n, 1),
                           "exact_refusal": sum(r["exact"]["refusal"] for r in rows) / max(n, 1),
                           "estimate_corr": sum(r["estimate_corr"] for r in rows if not math.isnan(r["estimate_corr"]))
                           / max(1, sum(not math.isnan(r["estimate_corr"]) for r in rows)),
                           "top": sum(r["choice_estimate_rank"] < case.cfg.screen_top for r in rows) / max(n, 1),
                           "exact_s": sum(r["exact_s"] for r in rows) / max(n, 1)}
    for name in VARIANTS:
        out[name] = {"recall": sum(r[name]["same"] for r in rows) / max(n, 1),
                     "refusal": sum(r[name]["refusal"] for r in rows) / max(n, 1),
                     "filters": sum(r[name]["kl"] + r[name]["induce"] for r in rows) / max(n, 1),
                     "s": sum(r[name]["s"] for r in rows) / max(n, 1)}
    out["exact_filters"] = sum(r["exact"]["kl"] + r["exact"]["induce"] for r in rows) / max(n, 1)
    return out


def print_table(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The recall table, totals, and the reduction at Llama-3.2-1B's 60 candidates; returns the totals."""
    print("\nrecall of the exact choice (same (layer, position) as scoring every candidate exactly); exact refusal "
          "passes and scoring seconds per iteration (screened: + ≈3 passes for the gradient, included in the seconds)")
    print("fallbk: iterations without a survivor; corr: Pearson r of estimate vs exact refusal (mean over "
          "iterations); top8: exact choice among the estimate's first screen_top")
    head = (f"{'model':<16} {'iters':>5} {'cands':>5} {'fallbk':>6} {'corr':>5} {'top8':>5} {'exact':>5} {'s/it':>5} | "
            + " | ".join(f"{n + ' recall':>24} {'passes':>6} {'s/it':>5}" for n in VARIANTS))
    print(head)
    for s in summaries:
        print(f"{s['name']:<16} {s['iterations']:>5} {s['candidates']:>5.0f} {100 * s['fallback_share']:>5.0f}% "
              f"{s['estimate_corr']:>5.2f} {100 * s['top']:>4.0f}% {s['exact_refusal']:>5.1f} {s['exact_s']:>5.2f} | "
              + " | ".join(f"{s[n]['recall']:>24.2f} {s[n]['refusal']:>6.1f} {s[n]['s']:>5.2f}" for n in VARIANTS))
    iters = sum(s["iterations"] for s in summaries)
    totals: dict[str, Any] = {"iterations": iters}
    for n in VARIANTS:
        same = sum(s[n]["recall"] * s["iterations"] for s in summaries)
        totals[n] = {"recall": same / max(iters, 1)}
    print((f"{'all':<16} {iters:>5} {'':>5} {'':>6} {'':>5} {'':>5} {'':>5} {'':>5} | "
           + " | ".join(f"{totals[n]['recall']:>24.2f} {'':>6} {'':>5}" for n in VARIANTS)).rstrip())
    at60 = [s for s in summaries if round(s["candidates"]) == 60]
    if at60:
        iters60 = sum(s["iterations"] for s in at60)
        print(f"\nat Llama-3.2-1B's 60 candidates (measured on the {len(at60)} random 16-block models, "
              f"{iters60} iterations; exact = 60 refusal passes):")
        for n in VARIANTS:
            mean = sum(s[n]["refusal"] * s["iterations"] for s in at60) / iters60
            totals[n]["passes_at_60"] = mean
            print(f"  {n:<18} {mean:5.1f} refusal passes ({mean + GRADIENT_PASSES:5.1f} with the gradient pass): "
                  f"{100 * (1 - mean / 60):5.1f}% fewer ({100 * (1 - (mean + GRADIENT_PASSES) / 60):5.1f}% with it)")
    for n in VARIANTS:
        if totals[n]["recall"] < 1.0:
            print(f"NOTE: {n}: recall {totals[n]['recall']:.2f} < 1.00 — exact scoring stays the default")
    return totals


def run_screening(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    quick = bool(args.quick)
    dirs = list(getattr(args, "organism_dirs", None) or ([args.organism_dir] if args.organism_dir else []))
    k_org, k_rand = (2, 2) if quick else (6, 10)
    cases: list[Case] = []
    t0 = time.perf_counter()
    summaries = []
    for directory in dirs:
        case = organism_case(directory, k_org, quick)
        if case is not None:
            cases.append(run_case(case))
            summaries.append(summary(case))
    for family in RANDOM_FAMILIES:
        cases.append(run_case(random_case(family, k_rand, quick)))
        summaries.append(summary(cases[-1]))
    totals = print_table(summaries)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"models": summaries, "totals": totals,
                                              "rows": {c.name: c.rows for c in cases}}, indent=2) + "\n")
    return 0
