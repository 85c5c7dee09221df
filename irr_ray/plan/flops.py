"""Counted FLOPs of a study, per stage (pure: typed configs and shapes in, numbers out).

Every forward is :func:`irr_ray.bench.attack.forward_flops` — per token and block 2·(block weights)
plus attention's 4·T·H·d (QKᵀ and AV over the whole T×T product, as SDPA computes it), and 2·D·V
per row through the LM head: the 2·N·tokens forward of Kaplan et al. (2020, "Scaling Laws for
Neural Language Models", §2.1) with the attention term of Narayanan et al. (2021, "Efficient
Large-Scale Language Model Training on GPU Clusters Using Megatron-LM"). Training is forward +
backward at twice the forward (Kaplan et al.; Hoffmann et al. 2022, "Chinchilla", App. F:
C ≈ 6·N·D): 3 × the forward, with no activation recomputation. A cached decode step of a row whose context holds
C tokens costs 2·(block weights) per block, the head, and 4·C·H·d of attention (the KV cache
spares the rest). The attack's per-iteration parts mirror :func:`irr_ray.bench.attack.split_flops`
(extraction; candidate scoring at the reference scorer, the upper bound of the fast one;
behavioural evaluation; judge), counted from a token-length assumption instead of a tokenizer.

Token counts are the planner's stated assumptions (:class:`TokenAssumptions`): every prompt has
``prompt_tokens`` chat-formatted tokens (padding included) and every reply runs to the stage's
``max_new_tokens`` — the bound HF ``generate`` pays whenever one reply in a batch never ends.
Where a run can stop early (ASHA, ``attack.stop_below_threshold``, replies that end) the count is
the upper bound; ASHA's expected share is reported beside it (:func:`asha_expected_epochs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from irr_ray.attack.config import AttackConfig
from irr_ray.bench.attack import forward_flops
from irr_ray.data.config import DataConfig, JudgeSettings
from irr_ray.plan.shapes import ModelShape
from irr_ray.train.config import SweepConfig, TrainConfig


@dataclass(frozen=True)
class TokenAssumptions:
    """Token lengths the counts assume (see the module docstring)."""

    prompt_tokens: int
    source: str = "assumed"


@dataclass(frozen=True)
class StageCount:
    """FLOPs of one stage. ``dense`` runs at the training/prefill MFU, ``decode`` at the decode MFU
    (:mod:`irr_ray.plan.cluster`). ``units`` independent tasks of equal size (sweep trials, attacked
    models; ``0`` = divisible work, e.g. rows sharded over actors), ``parallel`` of them at a time
    at most (the config's concurrency), ``gpus_per_unit`` GPUs each."""

    stage: str
    counted: str
    dense: float
    decode: float
    units: int = 0
    parallel: int = 1
    gpus_per_unit: float = 1.0
    decode_backend: str = "hf"
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.dense + self.decode


# ------------------------------------------------------------------ building blocks


def prefill_flops(shape: ModelShape, rows: int, tokens: int, head: str = "last", blocks: int | None = None) -> float:
    """One forward of ``rows`` × ``tokens``; the LM head at the ``last`` position, at ``all``, or ``none``."""
    head_rows = {"last": rows, "all": rows * tokens, "none": 0}[head]
    return forward_flops(shape, rows, tokens, shape.num_hidden_layers if blocks is None else blocks, head_rows)


def decode_flops(shape: ModelShape, rows: int, prompt_tokens: int, new_tokens: int) -> float:
    """``new_tokens − 1`` cached decode steps after the prefill (which yields the first token): step
    t (1 … new − 1) feeds one token per row whose attention reads P + t cached positions:
    Σ_t [2·L·W_block + 2·D·V + 4·L·H·d·(P + t)] per row."""
    steps = new_tokens - 1
    if steps <= 0:
        return 0.0
    attention_per_context = rows * shape.num_hidden_layers * 4 * shape.num_attention_heads * shape.head_dim
    one_step = prefill_flops(shape, rows, 1) - attention_per_context  # weights + head, no attention
    context = steps * prompt_tokens + steps * (steps + 1) // 2  # Σ_t (P + t)
    return float(steps * one_step + attention_per_context * context)


def generation_flops(shape: ModelShape, rows: int, prompt_tokens: int, new_tokens: int) -> tuple[float, float]:
    """(prefill, decode) FLOPs of greedy generation of ``new_tokens`` per row."""
    return prefill_flops(shape, rows, prompt_tokens), decode_flops(shape, rows, prompt_tokens, new_tokens)


def training_step_flops(shape: ModelShape, rows: int, tokens: int) -> float:
    """One optimizer micro-step, every weight trainable: forward (LM head at every position, the
    LM loss) + backward at 2 × the forward (weight and input gradients) = 3 × forward — the 6·N
    per token of Kaplan et al. (2020) with attention."""
    return 3 * prefill_flops(shape, rows, tokens, head="all")


def judge_flops(judge: JudgeSettings, judge_shape: ModelShape | None, rows: int, tokens: int) -> float:
    """A WildGuard-format judge reads prompt + reply once (a forward of ``tokens`` per row; its
    instruction template and its few output tokens are left out, as in ``split_flops``); a
    substring judge costs no FLOPs."""
    if judge.kind != "wildguard" or judge_shape is None:
        return 0.0
    return prefill_flops(judge_shape, rows, tokens)


def asha_expected_epochs(epochs: int, grace_period: int, reduction_factor: float) -> float:
    """Epochs a trial runs on average under ASHA if each rung keeps exactly 1/rf of the trials:
    rungs r_i = grace·rf^i < max_t; a trial runs grace epochs, then rf^-(i+1) of the trials
    continue from r_i to min(r_{i+1}, max_t) (Li et al. 2020, "A System for Massively Parallel
    Hyperparameter Tuning")."""
    if epochs <= grace_period:
        return float(epochs)
    rungs = []
    r = float(grace_period)
    while r < epochs:
        rungs.append(r)
        r *= reduction_factor
    total = float(grace_period)
    for i, start in enumerate(rungs):
        end = min(rungs[i + 1] if i + 1 < len(rungs) else epochs, epochs)
        total += (end - start) / reduction_factor ** (i + 1)
    return total


# ------------------------------------------------------------------ data stage


def generated_rows(data: DataConfig, available_rows: int) -> int:
    """Prompts that reach generation: at most the source's rows, capped at ``max_samples``
    (balancing and dedup can only lower it: an upper bound)."""
    return min(available_rows, data.max_samples) if data.max_samples is not None else available_rows


def data_stage(data: DataConfig, source: ModelShape, judge_shape: ModelShape | None, available_rows: int,
               tokens: TokenAssumptions) -> StageCount:
    """Generation of one greedy reply per prompt with the source model, then the judge."""
    rows, p, r = generated_rows(data, available_rows), tokens.prompt_tokens, data.generation.max_new_tokens
    prefill, decode = generation_flops(source, rows, p, r)
    judge = judge_flops(data.judge, judge_shape, rows, p + r)
    gen, jdg = data.generation, data.judge
    gen_gpus = gen.num_actors * max(gen.num_gpus_per_actor, 1.0)
    judge_gpus = jdg.num_actors * max(jdg.num_gpus_per_actor, 1.0) if judge else 0.0
    judge_name = judge_shape.name if judge else data.judge.kind
    return StageCount(
        stage="data",
        counted=f"{rows:,} prompts × ({p} prompt + {r} new tokens) on {source.name}; judge {judge_name}",
        dense=prefill + judge, decode=decode, units=0, parallel=int(gen_gpus + judge_gpus),
        decode_backend=gen.backend,
        parts={"generate_prefill": prefill, "generate_decode": decode, "judge": judge,
               "rows": float(rows), "generation_gpus": gen_gpus, "judge_gpus": judge_gpus},
        notes=[f"{rows:,} prompts is an upper bound: adversarial, unlabelled and repeated rows and the larger "
               "class's excess are dropped before generation (--set data.max_samples=N plans a known count)"])


# ------------------------------------------------------------------ sweep stage


def training_rows(data: DataConfig, train: TrainConfig, available_rows: int) -> int:
    """Training prompts per epoch: train_frac of the generated rows, less the validation slice
    (2·n_per_class), capped at ``max_train_samples``, in whole class-balanced micro-batches (every
    row with ``batching: shuffled``, the method's stream; its last micro-batch may be shorter)."""
    rows = int(generated_rows(data, available_rows) * data.train_frac) - 2 * train.eval.n_per_class
    if train.max_train_samples is not None:
        rows = min(rows, train.max_train_samples)
    if train.batching == "shuffled":
        return max(0, rows)
    half = train.micro_batch // 2
    return max(0, (rows // 2) // half) * train.micro_batch


def train_eval_flops(train: TrainConfig, shape: ModelShape, p: int) -> float:
    """The per-epoch evaluation (:mod:`irr_ray.train.evaluation`): one forward of the validation
    slice (head everywhere: the LM loss), the attack proxy (per K, every remaining candidate on
    the harmful proxy prompts, then the chosen set on the harmless ones; last position), and the
    reply-drift NLL of the source's replies at K=0 and ablated."""
    e = train.eval
    val = prefill_flops(shape, 2 * e.n_per_class, p, head="all")
    proxy = sum(c * prefill_flops(shape, e.attack_prompts, p)
                for c in range(e.attack_candidates, e.attack_candidates - min(e.attack_k, e.attack_candidates), -1))
    proxy += min(e.attack_k, e.attack_candidates) * prefill_flops(shape, e.attack_prompts, p)
    drift = 2 * prefill_flops(shape, 2 * e.attack_prompts, p + e.reply_tokens, head="all") if e.reply_tokens >= 2 else 0
    return val + proxy + drift


def sweep_stage(data: DataConfig, train: TrainConfig, sweep: SweepConfig, source: ModelShape, available_rows: int,
                tokens: TokenAssumptions) -> StageCount:
    """``num_samples`` trials × ``epochs`` × the training prompts' micro-steps (3 × forward each), plus
    per trial the frozen teacher's forward over the training prompts (its last-position logits are
    cached once, :func:`irr_ray.train.trainer.teacher_logits`; counted for every trial, an upper
    bound: only KD and ablation conditions run it), the source's proxy replies, and per epoch the
    evaluation. Every trial runs every epoch (ASHA stops some: the expected count is in ``parts``)."""
    p = min(tokens.prompt_tokens, train.max_length)
    rows = training_rows(data, train, available_rows)
    steps_per_epoch = rows // train.micro_batch
    step = training_step_flops(source, train.micro_batch, p)
    per_epoch = steps_per_epoch * step + train_eval_flops(train, source, p)
    teacher = prefill_flops(source, rows, p)
    e = train.eval
    replies_prefill, replies_decode = generation_flops(source, 2 * e.attack_prompts, p, e.reply_tokens) \
        if e.reply_tokens >= 2 else (0.0, 0.0)
    trials = sweep.num_samples
    per_trial_dense = train.epochs * per_epoch + teacher + replies_prefill
    asha = asha_expected_epochs(train.epochs, sweep.asha.grace_period, sweep.asha.reduction_factor)
    return StageCount(
        stage="sweep",
        counted=(f"{trials} trials × {train.epochs} epochs × {rows:,} prompts × {p} tokens, 6·N training "
                 f"+ teacher forward + per-epoch eval"),
        dense=trials * per_trial_dense, decode=trials * replies_decode, units=trials,
        parallel=sweep.max_concurrent_trials, gpus_per_unit=max(sweep.resources.gpu, 1.0),
        parts={"train_steps": trials * train.epochs * steps_per_epoch * step,
               "train_eval": trials * train.epochs * train_eval_flops(train, source, p),
               "teacher": trials * teacher, "source_replies": trials * (replies_prefill + replies_decode),
               "train_rows_per_epoch": float(rows), "micro_steps_per_epoch": float(steps_per_epoch),
               "step_flops": step, "asha_expected_epochs": asha,
               "asha_expected_total": trials * (asha * per_epoch + teacher + replies_prefill + replies_decode)},
        notes=[f"ASHA (grace {sweep.asha.grace_period}, rf {sweep.asha.reduction_factor:g}) runs "
               f"{asha:.1f} of {train.epochs} epochs per trial on average if every rung halves"])


# ------------------------------------------------------------------ attack stage


def attack_iteration_flops(attack: AttackConfig, shape: ModelShape, judge_shape: ModelShape | None,
                           tokens: TokenAssumptions) -> dict[str, float]:
    """One K of the method's attack (``split_flops``' parts at uniform token lengths): extraction
    (``extract_n`` prompts per class up to the last candidate layer, no head); candidate scoring at
    the reference scorer (per candidate a full forward of the harmful and two of the harmless
    scoring prompts, head at every position, + the KL baseline once); the behavioural evaluation of
    ``eval_n`` prompts per class (generation, the reply-NLL forward of prompt + reply with the head
    on the reply, the first-token forward); the judge reading prompt + reply."""
    p, r = tokens.prompt_tokens, attack.generation.max_new_tokens
    if attack.max_prompt_tokens is not None:
        p = min(p, attack.max_prompt_tokens)
    layers = attack.candidate_layer_indices(shape.num_hidden_layers)
    n_cand = len(layers) * len(attack.positions)
    extract = prefill_flops(shape, 2 * attack.extract_n, p, head="none", blocks=max(layers))
    harmful = harmless = prefill_flops(shape, attack.score_n, p, head="all")
    score = n_cand * (harmful + 2 * harmless) + harmless
    rows = 2 * (attack.eval_n or 100)
    gen_prefill, gen_decode = generation_flops(shape, rows, p, r)
    nll = forward_flops(shape, rows, p + r, shape.num_hidden_layers, rows * r)
    first = prefill_flops(shape, rows, p)
    judge = judge_flops(attack.judge, judge_shape, rows, p + r)
    return {"extract": extract, "score": score, "eval_prefill": gen_prefill + nll + first, "eval_decode": gen_decode,
            "judge": judge, "candidates": float(n_cand)}


def evaluation_flops(attack: AttackConfig, shape: ModelShape, judge_shape: ModelShape | None,
                     tokens: TokenAssumptions) -> tuple[float, float]:
    """(dense, decode) FLOPs of one behavioural evaluation (one budget of any attack), judge included."""
    it = attack_iteration_flops(attack, shape, judge_shape, tokens)
    return it["eval_prefill"] + it["judge"], it["eval_decode"]


def suite_attack_flops(name: str, attack: AttackConfig, shape: ModelShape, judge_shape: ModelShape | None,
                       tokens: TokenAssumptions) -> tuple[float, float]:
    """(dense, decode) FLOPs of one suite attack on one model: every budget evaluated (the bound
    when ``stop_below_threshold`` stops early) plus its own search, budgets cumulative:

    * ``orthogonalize``: none (the dim directions, written into the weights);
    * ``rdo``: per cone dimension b, ``steps`` × (b = 1: one direction; else ``cone_samples``)
      forward + backward (3 × forward, an upper bound: only the direction is trained) of
      ``batch_size`` prompts per class;
    * ``optuna_abliteration``: per trial (the largest budget) a last-position forward of
      ``n_prompts`` prompts per class;
    * ``finetune``: the largest budget's steps × ``batch_size`` rows of prompt + answer, 3 ×
      forward (LoRA: an upper bound), after generating the ``n_examples`` answers.
    """
    settings = getattr(attack, name)
    budgets = list(settings.budgets)
    p = tokens.prompt_tokens
    eval_dense, eval_decode = evaluation_flops(attack, shape, judge_shape, tokens)
    dense, decode = len(budgets) * eval_dense, len(budgets) * eval_decode
    if name == "rdo":
        per_step = 3 * prefill_flops(shape, 2 * settings.batch_size, p)
        dense += sum(settings.steps * (1 if b == 1 else settings.cone_samples) * per_step for b in budgets)
    elif name == "optuna_abliteration":
        dense += max(budgets) * prefill_flops(shape, 2 * settings.n_prompts, p)
    elif name == "finetune":
        dense += max(budgets) * training_step_flops(shape, settings.batch_size, p + settings.max_answer_tokens)
        pre, dec = generation_flops(shape, settings.n_examples, p, settings.max_answer_tokens)
        dense, decode = dense + pre, decode + dec
    return dense, decode


def attack_stage(attack: AttackConfig, shape: ModelShape, judge_shape: ModelShape | None, models: int,
                 tokens: TokenAssumptions) -> StageCount:
    """Per model: the K=0 evaluation (+ the probes' forward of ``probe_train_n`` prompts per class
    to the probe layer), ``k_max`` iterations (every K run: the bound when the attack stops below
    the threshold or on a short direction), and each suite attack; ``models`` = trials + original
    (+ base), every one of the source's shape (trials are fine-tunes of it; the base model is its
    pre-trained twin)."""
    it = attack_iteration_flops(attack, shape, judge_shape, tokens)
    eval_dense, eval_decode = evaluation_flops(attack, shape, judge_shape, tokens)
    probe_layer = attack.probe_layer if attack.probe_layer is not None else \
        int(attack.probe_layer_fraction * shape.num_hidden_layers)
    probes = prefill_flops(shape, 2 * attack.probe_train_n, tokens.prompt_tokens, head="none",
                           blocks=max(probe_layer, 1))
    iter_dense = it["extract"] + it["score"] + it["eval_prefill"] + it["judge"]
    dim_dense = eval_dense + probes + attack.k_max * iter_dense
    dim_decode = eval_decode + attack.k_max * it["eval_decode"]
    suite = {name: suite_attack_flops(name, attack, shape, judge_shape, tokens)
             for name in attack.suite if name != "dim"}
    per_model_dense = dim_dense + sum(d for d, _ in suite.values())
    per_model_decode = dim_decode + sum(d for _, d in suite.values())
    attacks = ", ".join(attack.suite)
    return StageCount(
        stage="attack",
        counted=(f"{models} models × (K=0 eval + {attack.k_max} iterations × {int(it['candidates'])} candidates, "
                 f"eval {2 * (attack.eval_n or 100)} × {attack.generation.max_new_tokens} new tokens); suite: {attacks}"),
        dense=models * per_model_dense, decode=models * per_model_decode, units=models,
        parallel=models, gpus_per_unit=max(attack.resources.gpu, 1.0), decode_backend=attack.generation.backend,
        parts={"per_iteration_" + k: v for k, v in it.items()} | {
            "dim": models * (dim_dense + dim_decode),
            **{name: models * (d + c) for name, (d, c) in suite.items()}})


def report_stage() -> StageCount:
    """Reads JSON files and draws a plot: no model FLOPs."""
    return StageCount(stage="report", counted="tables and a plot from the attack files (no model runs)",
                      dense=0.0, decode=0.0, units=0, parallel=1)
