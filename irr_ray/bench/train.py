"""``irr-ray bench train``: cost of one training step of each condition vs a plain LM fine-tune step.

Same model, same left-padded class-balanced batch, same AdamW + clipping; the plain step is
``model(input_ids, labels) → backward → step``. A condition's step (:meth:`Trainer.before_step` +
``Trainer.compute_loss`` + backward + step) adds, depending on the variant:

* hidden-state pooling and the matching penalty (``mean``, ``cov`` through n×n Gram matrices);
* the KD term against *cached* teacher logits (computed once before timing, as the trainer does
  once per run): ``cov+kd``, ``kd``;
* reply KD (``+reply``): every prompt teacher-forced with the teacher's 16-token greedy reply
  (generated and its logits cached once before timing), KL at every reply position — a longer
  sequence, so these rows are also shown against a plain LM step on the same prompt ⊕ reply
  tokens (``plain+reply``);
* the ablation defenses (:mod:`irr_ray.train.defenses`): ``refat`` (p = 0.5 of the harmful rows
  appended as copies with the refusal direction ablated at every layer, re-estimated every 4
  steps from the batch's own activations), ``refat/1`` (re-estimated every step: the cost of the
  re-estimate itself), ``random`` (DeepRefusal: every harmful row copied, random layers and
  positions ablated), ``cov+kd+refat`` (presets compose), each also with reply KD as the presets
  ``refat`` / ``random_ablation`` / ``cov_kd_refat`` ship.

Steps of all variants are interleaved, so drifting machine load hits every variant alike; the
ratio uses each variant's best time (load only ever adds time), the median is printed beside it.
On CPU the clock is this process's CPU time (one torch thread), so other processes on a shared
machine do not enter the ratio; on CUDA it is wall time around synchronised steps. Targets:
cov+kd ≤ 1.10×; refat ≤ 1.5× (its direction re-estimation must not dominate).

Models: the organism (``--organism-dir``, else a random-init Llama of the organism's shape) and a
random-init Llama with Llama-3.2-1B's width (hidden 2048, 32 heads / 8 KV heads, FFN 8192, vocab
128256, tied embeddings) reduced to 4 layers. On CPU the bench runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from irr_ray.train.config import TrainConfig
from irr_ray.train.data import PromptSet
from irr_ray.train.replies import ReplyTargets, teacher_replies
from irr_ray.train.trainer import Trainer, autocast, teacher_logits

ORGANISM_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=465)
LLAMA_1B_4L = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0)
REPLY_TOKENS = 16
_REPLY = {"kd_reply_tokens": REPLY_TOKENS}
_REFAT = {"ablation": "refat", "refat_p": 0.5, "refat_interval": 4, "kd_lambda": 1.0}
_RANDOM = {"ablation": "random", "refat_p": 1.0, "refat_interval": 0, "random_p_layer": 0.5,
           "random_p_position": 0.5, "kd_lambda": 1.0}
VARIANTS = {
    "none": {"match": "none"},
    "mean": {"match": "mean", "mean_penalty": "l1"},
    "cov": {"match": "cov", "cov_penalty": "l2"},
    "cov+kd": {"match": "cov", "cov_penalty": "l2", "kd_lambda": 1.0},
    "kd": {"kd_lambda": 1.0},
    "refat": _REFAT,
    "refat/1": {**_REFAT, "refat_interval": 1},
    "random": _RANDOM,
    "cov+kd+refat": {"match": "cov", "cov_penalty": "l2", **_REFAT},
    "kd+reply": {"kd_lambda": 1.0, **_REPLY},
    "refat+reply": {**_REFAT, **_REPLY},
    "random+reply": {**_RANDOM, **_REPLY},
    "cov+kd+refat+reply": {"match": "cov", "cov_penalty": "l2", **_REFAT, **_REPLY},
}
REFERENCES = ("plain", "plain+reply")


def organism_model(organism_dir: str | None, device: str) -> tuple[str, torch.nn.Module]:
    if organism_dir and (Path(organism_dir) / "instruct" / "config.json").is_file():
        from irr_ray.train.run import load_master_model

        return "organism (instruct)", load_master_model(Path(organism_dir) / "instruct", device)
    return "organism shape (random init)", random_llama(ORGANISM_SHAPE, device)


def random_llama(shape: dict[str, Any], device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=512, **shape)
    return LlamaForCausalLM(cfg).to(device)


def synthetic_prompts(vocab: int, batch: int, length: int, seed: int = 0) -> PromptSet:
    """``batch`` prompts of varied length (≥ length/2, so padding happens), half of each class."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    ids = [torch.randint(1, vocab, (int(n),), generator=g) for n in lengths]
    labels = torch.tensor([i % 2 for i in range(batch)])
    return PromptSet(ids, labels, [""] * batch, pad_id=0)


def plain_step(model: torch.nn.Module, trainer: Trainer, batch: Any) -> None:
    """LM loss on every real token of ``batch`` (a prompt, or a prompt ⊕ reply batch)."""
    with autocast(trainer.device, trainer.dtype):
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, labels=labels, use_cache=False)
    out.loss.backward()
    trainer.optimizer_step()


def method_step(trainer: Trainer, batch: Any, generator: torch.Generator) -> None:
    trainer.before_step()
    loss, _ = trainer.compute_loss(batch, generator)
    loss.backward()
    trainer.optimizer_step()


def bench_model(name: str, model: torch.nn.Module, batch_size: int, length: int, repeats: int,
                device: str) -> dict[str, Any]:
    vocab = model.config.vocab_size
    prompts = synthetic_prompts(vocab, batch_size, length)
    base = TrainConfig(model="bench", micro_batch=batch_size, grad_accum=1, epochs=1, lr=1e-5, device=device)
    trainers = {}
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    teacher = teacher_logits(model, prompts, batch_size, device, dtype)
    replies: ReplyTargets = teacher_replies(model, prompts, REPLY_TOKENS, batch_size, device, dtype, None, 1e9)
    for key, over in {"plain": {}, "plain+reply": {}, **VARIANTS}.items():
        cfg = base.model_copy(update={"refat_samples": max(2, batch_size // 2), **over})
        trainers[key] = Trainer(cfg, model, prompts, teacher if cfg.uses_teacher else None, device,
                                replies=replies if cfg.uses_reply_kd else None)
    shared = trainers["plain"]
    for t in trainers.values():  # one AdamW state for all variants (AdamW allocates on its first step)
        t.optimizer, t.scheduler = shared.optimizer, shared.scheduler
    batch = prompts.collate(list(range(batch_size)), device)
    reply_batch = replies.extend(batch)
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {k: [] for k in trainers}

    on_gpu = device.startswith("cuda")
    clock = time.perf_counter if on_gpu else time.process_time

    def one(key: str) -> float:
        if on_gpu:
            torch.cuda.synchronize()
        t0 = clock()
        if key in REFERENCES:
            plain_step(model, trainers[key], reply_batch if key == "plain+reply" else batch)
        else:
            method_step(trainers[key], batch, generator)
        if on_gpu:
            torch.cuda.synchronize()
        return clock() - t0

    model.train()
    for key in trainers:  # warm-up
        one(key)
    for _ in range(repeats):
        for key in trainers:
            times[key].append(one(key))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "batch": batch_size, "seq_len": int(batch.input_ids.shape[1]),
            "device": device, "clock": "wall" if on_gpu else "process CPU", "repeats": repeats, "seconds": best, "median_seconds": med,
            "reply_tokens": REPLY_TOKENS,
            "ratio": {k: best[k] / best["plain"] for k in ("plain+reply", *VARIANTS)},
            "median_ratio": {k: med[k] / med["plain"] for k in ("plain+reply", *VARIANTS)},
            "ratio_same_tokens": {k: best[k] / best["plain+reply" if "reply" in k else "plain"] for k in VARIANTS}}


def print_result(r: dict[str, Any]) -> None:
    print(f"\n{r['model']}: {r['params'] / 1e6:.1f}M params, batch {r['batch']} x {r['seq_len']} tokens "
          f"(+{r['reply_tokens']} reply tokens in *reply), {r['device']}, {r['repeats']} interleaved repeats, "
          f"{r['clock']} time")
    print(f"  {'step':<19} {'best s':>9} {'vs plain':>9} {'median s':>10} {'vs plain':>9} {'vs same tokens':>15}")
    print(f"  {'plain':<19} {r['seconds']['plain']:>9.4f} {1.0:>8.3f}x {r['median_seconds']['plain']:>10.4f} "
          f"{1.0:>8.3f}x")
    for k in ("plain+reply", *VARIANTS):
        same = f"{r['ratio_same_tokens'][k]:>14.3f}x" if k in VARIANTS else ""
        print(f"  {k:<19} {r['seconds'][k]:>9.4f} {r['ratio'][k]:>8.3f}x {r['median_seconds'][k]:>10.4f} "
              f"{r['median_ratio'][k]:>8.3f}x {same}")
    for key, target in (("cov+kd", 1.10), ("refat", 1.5)):
        verdict = "meets" if r["ratio"][key] <= target else "MISSES"
        print(f"  {key} {r['ratio'][key]:.3f}x (best of each) {verdict} the <= {target:.2f}x target")
    print(f"  refat+reply {r['ratio_same_tokens']['refat+reply']:.3f}x vs a plain step on the same prompt + reply "
          "tokens")


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(1)  # one core per step: stable timings on a shared machine
    quick = bool(args.quick)
    results = []
    name, model = organism_model(args.organism_dir, device)
    results.append(bench_model(name, model, batch_size=32, length=32, repeats=5 if quick else 30, device=device))
    print_result(results[-1])
    del model
    big = random_llama(LLAMA_1B_4L, device)
    on_gpu = device.startswith("cuda")
    results.append(bench_model("Llama-3.2-1B shape, 4 layers (random init)", big,
                               batch_size=8 if on_gpu else 4, length=128 if on_gpu else 32,
                               repeats=(3 if quick else 10) if on_gpu else (1 if quick else 3), device=device))
    print_result(results[-1])
    del big
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0
