"""``irr-ray bench attack``: seconds per attack iteration, reference vs fast scoring, same choices.

One iteration = extract the candidates (difference of means under the current ablation; shared
code) + score them + select. Both scorers see the same candidates; the reference's choice is
appended to the stack, and the fast scorer must have made the same choice with the same chosen
scores (to 1e-4). Reported: extraction time, scoring time of each side, the ratio of scoring times
and of whole iterations, and the ratio of matmul FLOPs (counted from the forwards each side runs:
independent of other load on the machine). Where the fast side saves on a CPU: refusal is scored
for every candidate (a third of the reference's forwards, a floor), KL / induce only as far as
the choice needs, induce restarted at the source layer, the LM head at the last position only.
Batching candidates per forward pays mostly on a GPU. Models:

* the organism's instruct model (``--organism-dir``; skipped without it);
* a random-init 4-layer Llama with Llama-3.2-1B's width (hidden 2048, FFN 8192, 32/8 heads). On
  CPU its vocabulary is cut to 8,192 rows (the full 128,256 makes the reference's all-position LM
  head alone take minutes per iteration here); ``--quick`` shrinks it to hidden 256;
* ``--device cuda``: Llama-3.2-1B's full shape (16 layers, vocab 128,256), random init, bf16 —
  seconds per iteration and the fraction of the GPU's bf16 matmul rate (measured with a large
  matmul) that the fast candidate scoring reaches, its FLOPs counted analytically from the
  forwards it ran (:class:`CountingFastScorer`, the production scorer with a forward log).

Prompts: the organism's WildGuardMix-shaped rows (no model needed) with its word-level tokenizer.
CPU runs use one torch thread.

``--eval-split`` (:func:`run_eval_split`) reports instead where an attack iteration's time goes: seconds
in extraction, candidate scoring and behavioural evaluation (the production scorer and generation
path) on the organism (``--eval-split-wide``: also the random 4-layer model of Llama-3.2-1B's width);
one behavioural evaluation with HF ``generate`` vs the shrinking decode loop
(:mod:`irr_ray.generation.hf`), alternated, replies checked string-equal; and the same split in FLOPs
for Llama-3.2-1B's full shape with the paper's settings (:func:`split_flops`, counted, not run).

``--screening`` (:mod:`irr_ray.bench.screening`) reports instead the recall of the exact candidate
choice under attribution screening (``scoring: screened``) and the exact refusal passes it saves.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.candidates import (
    EncodedPrompts,
    encode_batches,
    mean_difference_candidates,
    select_direction,
)
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.prompts import PromptPair
from irr_ray.attack.scoring import FastScorer, ReferenceScorer
from irr_ray.core.directions import orthonormalize
from irr_ray.models.families import get_layout

LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "rope_theta": 500000.0,
    "tie_word_embeddings": True, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
}
H200_BF16_DENSE_TFLOPS = 989.0  # datasheet (H100/H200 SXM, dense); the measured rate is what counts


class CountingFastScorer(FastScorer):
    """The production :class:`~irr_ray.attack.scoring.FastScorer` plus a log of the forwards it
    runs: (rows, sequence length, blocks run, rows through the LM head) each, for the FLOP count."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forward_log: list[tuple[int, int, int, int]] = []

    def _logits(self, batch: EncodedPrompts, repeat: int = 1, from_layer: int = 0) -> torch.Tensor:
        rows, seq = batch["input_ids"].shape
        self.forward_log.append((rows * repeat, seq, self.num_layers - from_layer, rows * repeat))
        return super()._logits(batch, repeat, from_layer)

    def _capture(self, q: torch.Tensor, layers: Any) -> dict[int, list[torch.Tensor]]:
        self.forward_log += [(*b["input_ids"].shape, max(layers), 0) for b in self.harmless]  # stops at the last
        return super()._capture(q, layers)


@dataclass
class Setup:
    name: str
    model: Any
    tokenizer: Any
    extract: PromptPair
    score: PromptPair
    cfg: AttackConfig
    iterations: int
    note: str = ""


def organism_prompts(extract_n: int, score_n: int, seed: int = 0,
                     parquet: Path | None = None) -> tuple[PromptPair, PromptPair]:
    """Disjoint extraction / scoring prompts per class from the organism's WildGuardMix-shaped rows."""
    if parquet is not None:
        import pandas as pd

        rows = pd.read_parquet(parquet).to_dict("records")
    else:
        from irr_ray.organism.dataset import make_rows

        rows = make_rows(3000, 0.1, 0.02, 0.4, seed)
    pools: dict[str, list[str]] = {"harmful": [], "unharmful": []}
    seen: set[str] = set()
    for row in rows:
        if not row["adversarial"] and row["prompt_harm_label"] in pools and row["prompt"] not in seen:
            seen.add(row["prompt"])
            pools[row["prompt_harm_label"]].append(row["prompt"])
    rng = random.Random(seed)
    for pool in pools.values():
        rng.shuffle(pool)
    h, u = pools["harmful"], pools["unharmful"]
    return (PromptPair(h[:extract_n], u[:extract_n]),
            PromptPair(h[extract_n:extract_n + score_n], u[extract_n:extract_n + score_n]))


def random_llama(shape: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from irr_ray.organism.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(**shape, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model, tokenizer


def forward_flops(config: Any, rows: int, seq: int, blocks: int, head_rows: int) -> float:
    """Matmul FLOPs of a forward: per token and block 2·(attention + MLP weights) plus 4·T·D for
    QKᵀ and AV (the full T×T product, as SDPA computes it), and 2·D·V per LM-head row."""
    d = config.hidden_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or d // heads
    weights = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * config.intermediate_size
    per_token_block = 2 * weights + 4 * seq * heads * hd
    return float(rows * seq * blocks * per_token_block + 2 * d * config.vocab_size * head_rows)


def prompt_flops(config: Any, tokenizer: Any, prompts: list[str], batch_size: int, all_positions: bool) -> float:
    """Matmul FLOPs of one full forward of ``prompts`` in chat-formatted batches of ``batch_size``,
    the LM head at every position (``all_positions``) or at the last one only."""
    return sum(forward_flops(config, *b["input_ids"].shape, config.num_hidden_layers,
                             b["input_ids"].numel() if all_positions else b["input_ids"].shape[0])
               for b in encode_batches(tokenizer, prompts, batch_size))


def reference_scoring_flops(config: Any, tokenizer: Any, score: PromptPair, batch_size: int,
                            n_candidates: int) -> float:
    """Matmul FLOPs of one reference scoring pass: per candidate a full forward of the harmful
    prompts (refusal) and two of the harmless ones (KL, induce), logits at every position, plus the
    KL baseline's harmless logits once. Load-independent, unlike seconds on a shared machine."""
    harmless = prompt_flops(config, tokenizer, score.harmless, batch_size, True)
    harmful = prompt_flops(config, tokenizer, score.harmful, batch_size, True)
    return n_candidates * (harmful + 2 * harmless) + harmless


def reference_flops(setup: Setup, n_candidates: int) -> float:
    """:func:`reference_scoring_flops` of a benchmark setup."""
    return reference_scoring_flops(setup.model.config, setup.tokenizer, setup.score, setup.cfg.extract_batch_size,
                                   n_candidates)


def refusal_floor_flops(fast: Any, n_candidates: int) -> float:
    """FLOPs every exact scorer must spend: the refusal score of *every* candidate is needed to know
    which survivor has the lowest one, i.e. one forward of the harmful scoring prompts per candidate
    (LM head at the last position only). reference / this = the largest FLOP ratio any exact scorer
    can reach; past it only a faster FLOP rate helps (batching candidates on a GPU)."""
    layers = fast.num_layers
    per_candidate = sum(forward_flops(fast.model.config, *b["input_ids"].shape, layers, b["input_ids"].shape[0])
                        for b in fast.harmful)
    return n_candidates * per_candidate


def analytic_bound(shape: dict[str, Any], score: PromptPair, batch_size: int, n_candidates: int) -> float:
    """``exact_flop_bound`` for a model shape that is not run: FLOPs counted from the shape and the
    scoring prompts' token counts (organism tokenizer), as for the models that are."""
    from transformers import LlamaConfig

    from irr_ray.organism.tokenizer import build_tokenizer

    config, tok = LlamaConfig(**shape), build_tokenizer()
    floor = n_candidates * prompt_flops(config, tok, score.harmful, batch_size, all_positions=False)
    return reference_scoring_flops(config, tok, score, batch_size, n_candidates) / floor


def matmul_rate(device: str, dtype: torch.dtype, n: int) -> float:
    """Measured dense matmul rate (FLOP/s) for n×n×n in ``dtype``: the ceiling scoring is compared to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(setup: Setup) -> dict[str, Any]:
    """Run ``setup.iterations`` attack iterations with both scorers (module docstring)."""
    model, tok, cfg = setup.model, setup.tokenizer, setup.cfg
    device = str(next(model.parameters()).device)
    _, ids = refusal_token_ids(model, tok, None)
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    harmful = encode_batches(tok, setup.extract.harmful, cfg.extract_batch_size, device)
    harmless = encode_batches(tok, setup.extract.harmless, cfg.extract_batch_size, device)
    reference = ReferenceScorer(model, tok, setup.score, ids, cfg)
    fast = CountingFastScorer.from_config(model, tok, setup.score, ids, cfg)
    rows, chosen = [], []
    for k in range(1, setup.iterations + 1):
        q = orthonormalize(torch.stack(chosen)) if chosen else None
        _sync(device)
        t0 = time.perf_counter()
        candidates = mean_difference_candidates(model, harmful, harmless, layers, cfg.positions, q)
        _sync(device)
        t1 = time.perf_counter()
        fast_scores = fast.score(candidates, chosen)
        _sync(device)
        t2 = time.perf_counter()
        ref_scores = reference.score(candidates, chosen)
        _sync(device)
        t3 = time.perf_counter()
        pick, fast_pick = select_direction(ref_scores, cfg), select_direction(fast_scores, cfg)
        err = max(abs(getattr(fast_scores[pick], key) - getattr(ref_scores[pick], key))
                  for key in ("refusal_score", "kl", "induce_score"))
        flops = sum(forward_flops(model.config, *f) for f in fast.forward_log)
        ref_flops = reference_flops(setup, len(candidates))
        floor = refusal_floor_flops(fast, len(candidates))
        fast.forward_log.clear()
        rows.append({"K": k, "candidates": len(candidates), "extract_s": t1 - t0, "fast_s": t2 - t1,
                     "reference_s": t3 - t2, "same_choice": pick == fast_pick, "chosen_score_err": err,
                     "choice": [ref_scores[pick].layer, ref_scores[pick].position],
                     "fast_tflop": flops / 1e12, "reference_tflop": ref_flops / 1e12,
                     "floor_tflop": floor / 1e12,
                     "fast_tflops_per_s": flops / (t2 - t1) / 1e12})
        chosen.append(candidates[pick].vector)
        print(f"  [{setup.name}] K={k}: {len(candidates)} candidates | extract {t1 - t0:.2f}s | "
              f"reference {t3 - t2:.2f}s | fast {t2 - t1:.2f}s ({(t3 - t2) / (t2 - t1):.1f}x, "
              f"FLOPs {ref_flops / flops:.1f}x) | "
              f"choice {rows[-1]['choice']} same={pick == fast_pick} err={err:.1e}", flush=True)
    n = len(rows)
    ref_s, fast_s, ext_s = (sum(r[k] for r in rows) / n for k in ("reference_s", "fast_s", "extract_s"))
    return {"name": setup.name, "note": setup.note, "device": device, "dtype": str(next(model.parameters()).dtype),
            "score_n": cfg.score_n, "extract_n": cfg.extract_n, "iterations": rows,
            "reference_s_per_iter": ref_s + ext_s, "fast_s_per_iter": fast_s + ext_s,
            "scoring_ratio": ref_s / fast_s, "iteration_ratio": (ref_s + ext_s) / (fast_s + ext_s),
            "scoring_flop_ratio": sum(r["reference_tflop"] for r in rows) / sum(r["fast_tflop"] for r in rows),
            "exact_flop_bound": sum(r["reference_tflop"] for r in rows) / sum(r["floor_tflop"] for r in rows),
            "identical_choices": all(r["same_choice"] for r in rows),
            "max_chosen_score_err": max(r["chosen_score_err"] for r in rows),
            "fast_tflops_per_s": sum(r["fast_tflop"] for r in rows) / sum(r["fast_s"] for r in rows)}


def cpu_setups(organism_dir: str | None, quick: bool) -> list[Setup]:
    from irr_ray.models.loading import load_model, load_tokenizer

    setups = []
    if organism_dir:
        path = Path(organism_dir).expanduser() / "instruct"
        cfg = AttackConfig(extract_n=32 if quick else 128, score_n=8 if quick else 32)
        extract, score = organism_prompts(cfg.extract_n, cfg.score_n,
                                          parquet=Path(organism_dir).expanduser() / "data" / "wildguardmix.parquet")
        setups.append(Setup("organism instruct", load_model(str(path), device="cpu"), load_tokenizer(str(path)),
                            extract, score, cfg, 1 if quick else 3))
    shape = {**LLAMA_1B, "num_hidden_layers": 4, "vocab_size": 8192}
    if quick:
        shape.update(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2)
    model, tok = random_llama(shape, "cpu", torch.float32)
    cfg = AttackConfig(extract_n=16 if quick else 32, score_n=4 if quick else 8)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    setups.append(Setup(f"random 4-layer, width {shape['hidden_size']}", model, tok, extract, score, cfg, 1,
                        note=f"vocab cut to {shape['vocab_size']} on CPU (full: 128256)"))
    return setups


def gpu_setup(device: str, quick: bool) -> Setup:
    """Llama-3.2-1B's full shape, random init, bf16 (``quick``: a tiny shape, e.g. to smoke-test on CPU)."""
    shape = dict(LLAMA_1B)
    if quick:
        shape.update(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, vocab_size=1024)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, tok = random_llama(shape, device, dtype)
    cfg = AttackConfig(extract_n=16 if quick else 128, score_n=4 if quick else 32,
                       score_batch_rows=64 if quick else 1024)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    return Setup("Llama-3.2-1B shape (random init)", model, tok, extract, score, cfg, 1 if quick else 2,
                 note=f"{dtype}".replace("torch.", ""))


def gpu_report(result: dict[str, Any], device: str, quick: bool) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    peak = matmul_rate(device, dtype, 1024 if quick else 8192)
    result["matmul_tflops_per_s"] = peak / 1e12
    result["fraction_of_matmul_rate"] = result["fast_tflops_per_s"] * 1e12 / peak
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
        result["fraction_of_h200_datasheet"] = result["fast_tflops_per_s"] / H200_BF16_DENSE_TFLOPS
    return result


def run(args: argparse.Namespace) -> int:
    from irr_ray.models.loading import default_device

    if getattr(args, "stage", False):
        from irr_ray.bench.stage import run_stage

        return run_stage(args)
    if getattr(args, "eval_split", False):
        return run_eval_split(args)
    if getattr(args, "screening", False):
        from irr_ray.bench.screening import run_screening

        return run_screening(args)
    device = args.device or default_device()
    results = []
    if device.startswith("cuda"):
        if args.organism_dir:
            results += [bench(s) for s in cpu_setups(args.organism_dir, args.quick)[:1]]
        results.append(gpu_report(bench(gpu_setup(device, args.quick)), device, args.quick))
    else:
        torch.set_num_threads(1)
        if not args.organism_dir:
            print("bench attack: no --organism-dir, skipping the organism (build one with `irr-ray organism build`)")
        results += [bench(s) for s in cpu_setups(args.organism_dir, args.quick)]
    print("\nseconds per attack iteration (extract + score + select), reference vs fast:")
    print(f"{'model':<36} {'reference':>10} {'fast':>8} {'iter x':>7} {'scoring x':>10} {'FLOPs x':>8} "
          f"{'bound x':>8} {'same':>5}  note")
    for r in results:
        print(f"{r['name']:<36} {r['reference_s_per_iter']:>9.2f}s {r['fast_s_per_iter']:>7.2f}s "
              f"{r['iteration_ratio']:>6.1f}x {r['scoring_ratio']:>9.1f}x {r['scoring_flop_ratio']:>7.1f}x "
              f"{r['exact_flop_bound']:>7.1f}x {str(r['identical_choices']):>5}  {r['note']}")
        if "fraction_of_matmul_rate" in r:
            print(f"{'':<36} fast scoring: {r['fast_tflops_per_s']:.1f} TFLOP/s = "
                  f"{100 * r['fraction_of_matmul_rate']:.0f}% of the measured matmul rate "
                  f"({r['matmul_tflops_per_s']:.0f} TFLOP/s)")
    cfg = AttackConfig()
    _, score = organism_prompts(cfg.extract_n, cfg.score_n)
    n_cand = len(cfg.candidate_layer_indices(LLAMA_1B["num_hidden_layers"])) * len(cfg.positions)
    print(f"{'Llama-3.2-1B full shape (FLOPs only)':<36} {'':>10} {'':>8} {'':>7} {'':>10} {'':>8} "
          f"{analytic_bound(LLAMA_1B, score, cfg.extract_batch_size, n_cand):>7.1f}x  counted, not run")
    print("bound x: reference FLOPs / the refusal pass over every candidate, which any scorer that makes the "
          "same choices must run; a FLOP-bound CPU cannot beat it, a GPU gains by batching candidates")
    for r in results:
        if not r["identical_choices"]:
            print(f"WARNING: {r['name']}: fast and reference chose differently (max chosen-score difference "
                  f"{r['max_chosen_score_err']:.2g}; in {r['dtype']} near-ties can flip)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------ --eval-split: where an iteration's time goes

PAPER_ATTACK = {"score_n": 32, "extract_n": 128, "eval_n": 100, "max_new_tokens": 256, "k_max": 16}
WILDGUARD_PARAMS = 7.24e9  # the judge (Mistral-7B-based), for the optional judge column of the FLOP split


def _timed(fn: Any, device: str) -> tuple[Any, float]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def evaluator_variant(evaluator: Any, engine: str, reuse_prefill: bool) -> Any:
    """A copy of ``evaluator`` (same prompts, judge, calibrated bound, cached K=0 logits) whose
    replies come from generation ``engine`` (``hf-generate``: HF ``generate``; ``shrinking``: the
    decode loop that drops finished rows), with or without prompt reuse (first-token logits from the
    generation's prefill, reply NLLs from the reference's prompt cache); everything else unchanged."""
    copy = evaluator.__class__.__new__(evaluator.__class__)
    copy.__dict__.update(evaluator.__dict__)
    copy.generation = evaluator.generation.model_copy(update={"engine": engine, "reuse_prefill": reuse_prefill})
    return copy


def evaluator_with_engine(evaluator: Any, engine: str) -> Any:
    """:func:`evaluator_variant` without prompt reuse."""
    return evaluator_variant(evaluator, engine, False)


def same_outcomes(a: Any, b: Any, nll_tol: float = 1e-6) -> bool:
    """Two behaviours (:class:`~irr_ray.attack.behaviour.Behaviour`) agree: outcome counts, first-token refusal
    probabilities and KL exactly, reply NLLs to ``nll_tol`` (the cached reply forward's rounding)."""
    for cls in ("harmful", "harmless"):
        x, y = getattr(a, cls), getattr(b, cls)
        if (x.n, x.refused, x.complied, x.degenerate, x.p_refusal) != (y.n, y.refused, y.complied, y.degenerate,
                                                                       y.p_refusal):
            return False
        if not (abs(x.reply_nll - y.reply_nll) <= nll_tol or (x.reply_nll != x.reply_nll and y.reply_nll != y.reply_nll)):
            return False
    return a.kl_harmless == b.kl_harmless


def split_iterations(model: Any, tokenizer: Any, model_path: str, prompts: Any, cfg: AttackConfig,
                     iterations: int, name: str) -> tuple[dict[str, Any], Any, list[torch.Tensor]]:
    """Run ``iterations`` attack iterations as :func:`irr_ray.attack.iterated.run_iterated_attack` does
    (extract → score (production scorer) → select → behavioural evaluation) and time each part. The
    evaluation runs twice per K, alternating which goes first: the plain path (``hf-generate``, the
    first-token and prompt + reply forwards of its own) and the fast path (``cfg``: shrinking loop,
    prompt reuse), whose outcomes must agree (:func:`same_outcomes`). Returns (result, the fast
    evaluator, raw chosen directions)."""
    from irr_ray.attack.evaluate import make_evaluator
    from irr_ray.attack.scoring import make_scorer
    from irr_ray.bench.stage import plain_config

    device = str(next(model.parameters()).device)
    _, ids = refusal_token_ids(model, tokenizer, cfg.refusal_tokens)
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    harmful = encode_batches(tokenizer, prompts.extract.harmful, cfg.extract_batch_size, device, cfg.max_prompt_tokens)
    harmless = encode_batches(tokenizer, prompts.extract.harmless, cfg.extract_batch_size, device,
                              cfg.max_prompt_tokens)
    evaluator, _ = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg)
    plain, _ = make_evaluator(model, tokenizer, model_path, prompts.eval, plain_config(cfg))
    b_plain, k0_plain_s = _timed(lambda: plain.run(None), device)
    b_fast, k0_s = _timed(lambda: evaluator.run(None), device)
    same = same_outcomes(b_plain, b_fast)
    scorer = make_scorer(model, tokenizer, prompts.score, ids, cfg)
    rows, chosen = [], []
    width = model.config.hidden_size
    for k in range(1, iterations + 1):
        q = orthonormalize(torch.stack(chosen)).to(device) if chosen else None
        candidates, ext = _timed(lambda: mean_difference_candidates(model, harmful, harmless, layers, cfg.positions,
                                                                    q), device)  # noqa: B023
        scores, sc = _timed(lambda: scorer.score(candidates, [c.to(device) for c in chosen]), device)  # noqa: B023
        chosen.append(candidates[select_direction(scores, cfg)].vector.detach().float().cpu())
        qk = orthonormalize(torch.stack(chosen)).reshape(-1, width)
        runs: dict[str, Any] = {}
        for side in (("plain", "fast") if k % 2 else ("fast", "plain")):
            ev_side = plain if side == "plain" else evaluator
            runs[side] = _timed(lambda ev_side=ev_side, qk=qk: ev_side.run(qk), device)
        (behaviour, ev), (b_plain, ev_plain) = runs["fast"], runs["plain"]
        same = same and same_outcomes(b_plain, behaviour)
        rows.append({"K": k, "extract_s": ext, "score_s": sc, "eval_s": ev, "eval_plain_s": ev_plain,
                     "candidates": len(candidates), "refusal_harmful": behaviour.refusal_harmful})
        print(f"  [{name}] K={k}: extract {ext:.2f}s | score {sc:.2f}s ({len(candidates)} candidates) | "
              f"eval plain {ev_plain:.2f}s, fast {ev:.2f}s | harmful refused {behaviour.refusal_harmful:.2f}",
              flush=True)
    n = len(rows)
    mean = {key: sum(r[key] for r in rows) / n for key in ("extract_s", "score_s", "eval_s", "eval_plain_s")}
    total = mean["extract_s"] + mean["score_s"] + mean["eval_s"]
    total_plain = mean["extract_s"] + mean["score_s"] + mean["eval_plain_s"]
    return ({"name": name, "device": device, "extract_n": cfg.extract_n, "score_n": cfg.score_n,
             "eval_n": [len(prompts.eval.harmful), len(prompts.eval.harmless)],
             "max_new_tokens": cfg.generation.max_new_tokens, "k0_eval_s": k0_s, "k0_eval_plain_s": k0_plain_s,
             "iterations": rows, "identical_outcomes": same,
             **{f"{key}_per_iter": v for key, v in mean.items()},
             **{f"{key[:-2]}_share": v / total for key, v in mean.items() if key != "eval_plain_s"},
             "extract_share_plain": mean["extract_s"] / total_plain, "score_share_plain": mean["score_s"] / total_plain,
             "eval_share_plain": mean["eval_plain_s"] / total_plain},
            evaluator, chosen)


def eval_engines(evaluator: Any, directions: torch.Tensor, repeats: int, sort_by_length: bool = True) -> dict[str, Any]:
    """Seconds per behavioural evaluation (whole :meth:`BehaviourEvaluator.run`) and per generation
    alone, old vs new, ``directions`` ablated; the sides alternate (ABBA…) so load drifts hit both
    alike. Evaluation: the plain path (HF ``generate``, separate first-token and prompt + reply
    forwards) vs the fast one (the shrinking loop with prompt reuse), outcomes equal
    (:func:`same_outcomes`); generation: HF ``generate`` vs the shrinking loop, replies string-equal."""
    from irr_ray.core.hooks import ablate_directions
    from irr_ray.generation.hf import generate_greedy

    model, tok = evaluator.model, evaluator.tokenizer
    device = str(next(model.parameters()).device)
    d = directions.to(device)
    prompts, gen = evaluator._all, evaluator.generation
    old_eval = evaluator_variant(evaluator, "hf-generate", False)
    new_eval = evaluator_variant(evaluator, "shrinking", True)

    def generate(engine: str, sort: bool = False) -> list[str]:
        return generate_greedy(model, tok, prompts, gen.max_new_tokens, gen.batch_size,
                               lambda: ablate_directions(model, d), engine=engine, sort_by_length=sort)

    sides: dict[str, Any] = {
        "eval_old": lambda: old_eval.run(directions), "eval_new": lambda: new_eval.run(directions),
        "gen_old": lambda: generate("hf-generate"), "gen_new": lambda: generate("shrinking"),
    }
    if sort_by_length:
        sides["gen_new_sorted"] = lambda: generate("shrinking", True)
    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, Any] = {}
    for rep in range(repeats):
        for key in (sides if rep % 2 == 0 else reversed(list(sides))):
            outputs[key], t = _timed(sides[key], device)
            times[key].append(t)
    best = {k: min(v) for k, v in times.items()}
    same = outputs["gen_old"] == outputs["gen_new"] and same_outcomes(outputs["eval_old"], outputs["eval_new"])
    if sort_by_length:
        same = same and outputs["gen_new_sorted"] == outputs["gen_old"]
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in outputs["gen_old"]]
    return {"repeats": repeats, "seconds": times, "best_s": best, "identical_replies": same,
            "eval_ratio": best["eval_old"] / best["eval_new"], "generation_ratio": best["gen_old"] / best["gen_new"],
            **({"generation_ratio_sorted": best["gen_old"] / best["gen_new_sorted"]} if sort_by_length else {}),
            "n_prompts": len(prompts), "mean_reply_tokens": sum(lengths) / len(lengths),
            "replies_at_limit": sum(n >= gen.max_new_tokens for n in lengths)}


def _decode_flops(config: Any, rows: int, prompt_len: int, new_tokens: int) -> float:
    """Matmul FLOPs of ``new_tokens − 1`` cached decode steps (the first token comes from the
    prefill): per token and block 2·weights + 4·context·heads·head_dim, LM head 2·D·V."""
    if new_tokens <= 1:
        return 0.0
    d, heads = config.hidden_size, config.num_attention_heads
    hd = getattr(config, "head_dim", None) or d // heads
    one = forward_flops(config, rows, 1, config.num_hidden_layers, rows) - rows * config.num_hidden_layers * 4 * heads * hd
    steps = new_tokens - 1
    context = steps * prompt_len + steps * (steps + 1) // 2  # Σ_t (P + t)
    return steps * one + rows * config.num_hidden_layers * 4 * heads * hd * context


def _cached_forward_flops(config: Any, rows: int, past: int, seq: int, head_rows: int) -> float:
    """:func:`forward_flops` of ``seq`` new tokens per row on top of ``past`` cached ones: the
    attention products run over past + seq keys (4·(past + seq)·heads·head_dim per token and block)."""
    heads = config.num_attention_heads
    hd = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (forward_flops(config, rows, seq, config.num_hidden_layers, head_rows)
            + rows * seq * config.num_hidden_layers * 4 * past * heads * hd)


def split_flops(shape: dict[str, Any], cfg: AttackConfig, extract: PromptPair, score: PromptPair, evaluate: PromptPair,
                max_new_tokens: int, reply_tokens: float | None = None, reuse: bool = False) -> dict[str, float]:
    """FLOPs of one attack iteration, by part, for a model ``shape`` (counted, not run).

    Forward FLOPs ≈ 2·params·tokens, plus attention's 4·T·D per token and block
    (:func:`forward_flops`); token counts from the prompts' chat-formatted lengths.

    * ``extract``: one forward of the extraction prompts of both classes up to the last candidate
      layer (no LM head): Σ_batches 2·W_block·rows·T·max(layers) (+ attention).
    * ``score``: between the refusal floor (one harmful-prompt forward per candidate, head at the last
      position; every exact scorer runs it) and the reference scorer (per candidate 1 harmful +
      2 harmless forwards, head at every position, + the KL baseline); the fast scorer lies in between.
    * ``eval``: generation = prefill (head at the last position) + ``reply_tokens − 1`` cached decode
      steps per row (default: every row to ``max_new_tokens``, which HF ``generate`` pays whenever a
      batch holds one reply that never ends; the shrinking loop pays each row's own length), + the
      reply-NLL forward of prompt + reply (head on the reply) + the first-token forward of the prompts.
    * ``judge``: WildGuard-7B reading prompt + reply once, 2·7.24e9·tokens (its few output tokens
      and chat template ignored) — on a separate engine, outside the ablation hooks.

    ``reuse`` (the fast path, :mod:`irr_ray.attack.behaviour`): no first-token forward (the
    generation's prefill gives it) and the reply NLLs from a forward over the reply tokens alone on
    the reference's cached prompt (:func:`_cached_forward_flops`); ``eval_prefix_once`` is that
    cache's one prefill of the prompts, paid once per attack (none at all when the K=0 generation of
    the reference itself hands its cache over).
    """
    from transformers import LlamaConfig

    from irr_ray.organism.tokenizer import build_tokenizer

    config, tok = LlamaConfig(**shape), build_tokenizer()
    layers = cfg.candidate_layer_indices(config.num_hidden_layers)
    n_cand = len(layers) * len(cfg.positions)
    bs = cfg.extract_batch_size
    extract_f = sum(forward_flops(config, *b["input_ids"].shape, max(layers), 0)
                    for b in encode_batches(tok, [*extract.harmful, *extract.harmless], bs))
    floor = n_cand * prompt_flops(config, tok, score.harmful, bs, all_positions=False)
    reference = reference_scoring_flops(config, tok, score, bs, n_cand)
    new = max_new_tokens if reply_tokens is None else reply_tokens
    gen_f = nll_f = first_f = prefix_f = 0.0
    prompts = [*evaluate.harmful, *evaluate.harmless]
    gbs = cfg.generation.batch_size
    r = int(round(new))
    for b in encode_batches(tok, prompts, gbs):
        rows, seq = b["input_ids"].shape
        prefill = forward_flops(config, rows, seq, config.num_hidden_layers, rows)
        gen_f += prefill + _decode_flops(config, rows, seq, r)
        if reuse:
            nll_f += _cached_forward_flops(config, rows, seq, r, rows * r)
            prefix_f += prefill
        else:
            nll_f += forward_flops(config, rows, seq + r, config.num_hidden_layers, rows * r)
            first_f += prefill
    lengths = [len(x) for x in tok([*evaluate.harmful, *evaluate.harmless], add_special_tokens=False)["input_ids"]]
    judge_f = 2 * WILDGUARD_PARAMS * (sum(lengths) + len(lengths) * new)
    return {"extract": extract_f, "score_floor": floor, "score_reference": reference,
            "eval_generate": gen_f, "eval_nll_first_token": nll_f + first_f, "eval": gen_f + nll_f + first_f,
            "judge": judge_f, "candidates": float(n_cand), **({"eval_prefix_once": prefix_f} if reuse else {})}


def paper_flop_split() -> dict[str, Any]:
    """:func:`split_flops` for Llama-3.2-1B's full shape with the paper's settings (score_n 32,
    extract_n 128, eval_n 100 + 100, 256 new tokens, K_max 16), prompts from the organism's rows."""
    p = PAPER_ATTACK
    cfg = AttackConfig(score_n=p["score_n"], extract_n=p["extract_n"], eval_n=p["eval_n"], k_max=p["k_max"])
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    evaluate, _ = organism_prompts(p["eval_n"], 0, seed=1)
    per_iter = split_flops(LLAMA_1B, cfg, extract, score, evaluate, p["max_new_tokens"])
    short = split_flops(LLAMA_1B, cfg, extract, score, evaluate, p["max_new_tokens"], reply_tokens=64)
    fast = split_flops(LLAMA_1B, cfg, extract, score, evaluate, p["max_new_tokens"], reuse=True)
    fast_short = split_flops(LLAMA_1B, cfg, extract, score, evaluate, p["max_new_tokens"], reply_tokens=64, reuse=True)
    return {"settings": p, "per_iteration": per_iter, "eval_if_replies_end_at_64": short["eval"],
            "per_attack_k_max": {k: v * p["k_max"] for k, v in per_iter.items() if k != "candidates"},
            "per_iteration_reuse": fast, "eval_reuse_if_replies_end_at_64": fast_short["eval"]}


def _organism_sets(organism_dir: str, cfg: AttackConfig, study_data: str | None) -> Any:
    """Extraction / scoring / evaluation prompts: a study dataset (``--study-data``) as the attack
    draws them, else the organism's own rows and its held-out evaluation prompts."""
    from irr_ray.attack.prompts import PromptSets, load_prompt_sets
    from irr_ray.organism import heldout_eval_prompts

    if study_data:
        return load_prompt_sets(study_data, cfg)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n,
                                      parquet=Path(organism_dir).expanduser() / "data" / "wildguardmix.parquet")
    held = heldout_eval_prompts(cfg.eval_n or 100)
    evaluate = PromptPair(held["harmful"][:cfg.eval_n], held["harmless"][:cfg.eval_n])
    return PromptSets(extract=extract, score=score, probe=score, eval=evaluate)


def _wide_split(quick: bool) -> dict[str, Any]:
    """The split on a random 4-layer model of Llama-3.2-1B's width (vocab 8,192): a random model never
    ends a reply, so every row runs to ``max_new_tokens`` on both engines. Small sizes (CPU)."""
    import tempfile

    shape = {**LLAMA_1B, "num_hidden_layers": 4, "vocab_size": 8192}
    if quick:
        shape.update(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2)
    model, tok = random_llama(shape, "cpu", torch.float32)
    cfg = AttackConfig(extract_n=16 if quick else 32, score_n=4 if quick else 8, eval_n=8 if quick else 16)
    cfg.generation.max_new_tokens = 8 if quick else 16
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    evaluate, _ = organism_prompts(cfg.eval_n, 0, seed=1)
    from irr_ray.attack.prompts import PromptSets

    sets = PromptSets(extract=extract, score=score, probe=score, eval=evaluate)
    with tempfile.TemporaryDirectory() as tmp:  # the judge reads the model's declared phrases from its dir
        model.config.save_pretrained(tmp)
        result, _, _ = split_iterations(model, tok, tmp, sets, cfg, 1, f"random 4-layer, width {shape['hidden_size']}")
    result["note"] = f"vocab {shape['vocab_size']}, eval_n {cfg.eval_n}+{cfg.eval_n}, {cfg.generation.max_new_tokens} new"
    return result


def run_eval_split(args: argparse.Namespace) -> int:
    """``irr-ray bench attack --eval-split``: the per-iteration time split, old vs new generation
    engine on the behavioural evaluation, and the FLOP split at Llama-3.2-1B's full shape."""
    from irr_ray.models.loading import load_model, load_tokenizer

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    splits = []
    if args.organism_dir:
        path = str(Path(args.organism_dir).expanduser() / "instruct")
        cfg = AttackConfig(extract_n=32 if args.quick else 128, score_n=8 if args.quick else 32,
                           eval_n=20 if args.quick else 100)
        cfg.generation.max_new_tokens = 64
        sets = _organism_sets(args.organism_dir, cfg, getattr(args, "study_data", None))
        model, tok = load_model(path, device="cpu"), load_tokenizer(path)
        result, evaluator, chosen = split_iterations(model, tok, path, sets, cfg, 1 if args.quick else 3,
                                                     "organism instruct")
        splits.append(result)
        engines = eval_engines(evaluator, orthonormalize(chosen[0][None]), 2 if args.quick else args.eval_repeats)
        out["engines"] = engines
    else:
        print("bench attack --eval-split: no --organism-dir, skipping the organism")
    if args.eval_split_wide:
        splits.append(_wide_split(args.quick))
    out["splits"] = splits
    out["flops"] = paper_flop_split()

    print("\nseconds per attack iteration by part (CPU, 1 thread; production scorer), behavioural evaluation "
          "before (hf-generate, separate forwards) and after (shrinking loop, prompt reuse):")
    print(f"{'model':<32} {'extract':>8} {'score':>8} {'eval before':>12} {'eval after':>11}   "
          f"shares before → after (extract/score/eval)  note")
    for r in splits:
        print(f"{r['name']:<32} {r['extract_s_per_iter']:>7.2f}s {r['score_s_per_iter']:>7.2f}s "
              f"{r['eval_plain_s_per_iter']:>11.2f}s {r['eval_s_per_iter']:>10.2f}s   "
              f"{r['extract_share_plain']:.0%} / {r['score_share_plain']:.0%} / {r['eval_share_plain']:.0%} → "
              f"{r['extract_share']:.0%} / {r['score_share']:.0%} / {r['eval_share']:.0%}   {r.get('note', '')}"
              + ("" if r["identical_outcomes"] else "  OUTCOMES DIFFER"))
    if "engines" in out:
        e = out["engines"]
        b = e["best_s"]
        print(f"\nbehavioural evaluation, K=1 ablated, {e['n_prompts']} prompts, 64 new tokens (best of "
              f"{e['repeats']}, alternated): plain {b['eval_old']:.2f}s vs fast {b['eval_new']:.2f}s "
              f"= {e['eval_ratio']:.2f}x; generation alone hf-generate {b['gen_old']:.2f}s vs shrinking "
              f"{b['gen_new']:.2f}s = {e['generation_ratio']:.2f}x"
              + (f" (sorted by length: {e['generation_ratio_sorted']:.2f}x)" if "generation_ratio_sorted" in e else ""))
        print(f"  identical replies and outcomes: {e['identical_replies']}; mean reply {e['mean_reply_tokens']:.1f} "
              f"tokens, {e['replies_at_limit']} of {e['n_prompts']} at the 64-token limit")
    f = out["flops"]["per_iteration"]
    s = out["flops"]["settings"]
    print(f"\nTFLOPs per iteration, Llama-3.2-1B full shape (counted, not run; score_n {s['score_n']}, extract_n "
          f"{s['extract_n']}, eval_n {s['eval_n']}+{s['eval_n']}, {s['max_new_tokens']} new tokens, "
          f"{int(f['candidates'])} candidates):")
    print(f"  extract {f['extract'] / 1e12:.1f} | score {f['score_floor'] / 1e12:.1f} (floor) … "
          f"{f['score_reference'] / 1e12:.1f} (reference) | eval {f['eval'] / 1e12:.1f} (generation "
          f"{f['eval_generate'] / 1e12:.1f}, every row to {s['max_new_tokens']}; "
          f"{out['flops']['eval_if_replies_end_at_64'] / 1e12:.1f} if replies end at 64) | judge (WildGuard-7B) "
          f"{f['judge'] / 1e12:.1f}")
    print(f"  × K_max {s['k_max']}: " + ", ".join(f"{k} {v / 1e15:.2f} PFLOP"
                                                 for k, v in out["flops"]["per_attack_k_max"].items()))
    g = out["flops"]["per_iteration_reuse"]
    print(f"  with prompt reuse: eval {g['eval'] / 1e12:.1f} (generation {g['eval_generate'] / 1e12:.1f}, reply NLLs "
          f"{g['eval_nll_first_token'] / 1e12:.1f}, no first-token pass; "
          f"{out['flops']['eval_reuse_if_replies_end_at_64'] / 1e12:.1f} if replies end at 64), plus "
          f"{g['eval_prefix_once'] / 1e12:.1f} once per attack for the reference's prompt cache")
    ok = all(r["identical_outcomes"] for r in splits) and out.get("engines", {}).get("identical_replies", True)
    if not ok:
        print("WARNING: the fast path's replies or outcomes differ from the plain path's")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0 if ok else 1
