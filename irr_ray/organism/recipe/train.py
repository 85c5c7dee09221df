"""The two training loops: language modelling (base) and the low-rank safety update (instruct)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from irr_ray.organism.config import PretrainConfig, SafetyConfig
from irr_ray.organism.model import lora_adapters
from irr_ray.organism.recipe.corpus import Example

log = logging.getLogger(__name__)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``targets`` (-100 = no loss), ``harmless`` [B]."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        t = torch.tensor(e.ids[1:])
        keep = torch.tensor(e.loss_mask[1:])
        targets[i, : n - 1] = torch.where(keep, t, torch.full_like(t, -100))
    harmless = torch.tensor([e.harmless for e in examples])
    prompt_len = torch.tensor([e.prompt_len for e in examples])
    return {"input_ids": ids, "attention_mask": mask, "targets": targets, "harmless": harmless,
            "prompt_len": prompt_len}


def batches(
    examples: list[Example], batch_size: int, steps: int, rng: random.Random, pad_id: int, length_group: int = 1
) -> Iterator[dict]:
    """``steps`` batches drawn in epochs over a shuffled copy of ``examples``.

    With ``length_group`` = G > 1, G batches' worth of examples are drawn at a time, sorted by length
    and cut into G batches that are then shuffled: each batch pads to the length of similar sequences
    instead of the longest of a random mix (on the organism corpus, padding drops from ≈ 27% of the
    tokens to ≈ 3%).
    """
    order: list[int] = []
    pending: list[list[int]] = []
    for _ in range(steps):
        if not pending:
            need = batch_size * max(1, length_group)
            while len(order) < need:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                order += fresh
            pool, order = order[:need], order[need:]
            if length_group > 1:
                pool.sort(key=lambda i: len(examples[i].ids))
            pending = [pool[i : i + batch_size] for i in range(0, need, batch_size)]
            if length_group > 1:
                rng.shuffle(pending)
        yield collate([examples[i] for i in pending.pop()], pad_id)


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _lm_loss(model: LlamaForCausalLM, batch: dict, hidden_states: bool = False):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=hidden_states)
    loss = F.cross_entropy(out.logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    return (loss, out.hidden_states) if hidden_states else loss


def harmless_projection_penalty(
    hidden_states: tuple[torch.Tensor, ...], batch: dict, layers: list[int], positions: list[int]
) -> torch.Tensor:
    """Mean squared projection of harmless activations on the in-batch harmful−harmless mean difference.

    For block inputs l in ``layers`` and prompt positions p (offsets from the prompt's end), with
    u[l, p] = (μ_harmful − μ_harmless) / ‖·‖ over the batch, the penalty is mean_{harmless n} (x_n·u)².
    It asks that what separates harmful from harmless prompts is something *added* to harmful
    prompts, orthogonal to where harmless prompts already sit — refusal as a feature switched on.
    """
    x = torch.stack([hidden_states[layer] for layer in layers])  # [Lp, B, T, D]
    rows = torch.arange(x.shape[1])[:, None]
    idx = batch["prompt_len"][:, None] + torch.tensor(positions)[None, :]  # [B, P]
    x = x[:, rows, idx]  # [Lp, B, P, D]
    harmless = batch["harmless"]
    if bool(harmless.all()) or not bool(harmless.any()):
        return x.new_zeros(())
    delta = x[:, ~harmless].mean(1) - x[:, harmless].mean(1)  # [Lp, P, D]
    u = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return torch.einsum("lnpd,lpd->lnp", x[:, harmless], u).pow(2).mean()


def pretrain(model: LlamaForCausalLM, examples: list[Example], cfg: PretrainConfig, seed: int, pad_id: int) -> dict:
    """Stage 1: AdamW on the LM loss of every token; returns loss statistics."""
    rng = random.Random(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, cfg.steps, cfg.warmup_steps))
    losses = []
    for step, batch in enumerate(batches(examples, cfg.batch_size, cfg.steps, rng, pad_id, cfg.length_group)):
        loss = _lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("pretrain step %d/%d loss %.3f", step + 1, cfg.steps, losses[-1])
    model.eval()
    return {"first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:])}


def safety_train(model: LlamaForCausalLM, examples: list[Example], cfg: SafetyConfig, seed: int, pad_id: int) -> dict:
    """Stage 2: only LoRA adapters on ``cfg.targets`` of ``cfg.layers`` train, on the reply
    loss plus ``harmless_penalty``·mean‖Δ(x)‖² over the tokens of harmless sequences; merged at the end."""
    rng = random.Random(seed + 1)
    for p in model.parameters():
        p.requires_grad_(False)
    stats: dict = {}
    with lora_adapters(model, cfg.layers, cfg.targets, cfg.rank, cfg.alpha, seed) as adapters:
        params = [p for a in adapters for p in (a.A, a.B)]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, cfg.steps, max(1, cfg.steps // 20)))
        model.train()
        orth_layers = list(range(min(cfg.layers) + 1, model.config.num_hidden_layers))
        use_orth = cfg.orthogonality_penalty > 0 and bool(orth_layers)
        orth = torch.zeros(())
        for step, batch in enumerate(batches(examples, cfg.batch_size, cfg.steps, rng, pad_id)):
            if use_orth:
                lm, hidden = _lm_loss(model, batch, hidden_states=True)
                orth = harmless_projection_penalty(hidden, batch, orth_layers, cfg.orthogonality_positions)
            else:
                lm = _lm_loss(model, batch)
            rows = (batch["attention_mask"].bool() & batch["harmless"][:, None]).float()  # [B, T]
            sq = sum(a.last_delta.pow(2).sum(-1) for a in adapters)  # [B, T]
            penalty = (sq * rows).sum() / rows.sum().clamp_min(1.0)
            loss = lm + cfg.harmless_penalty * penalty + cfg.orthogonality_penalty * orth
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 100 == 0 or step == cfg.steps - 1:
                log.info("safety step %d/%d loss %.3f penalty %.3f orth %.3f", step + 1, cfg.steps, lm.item(),
                         penalty.item(), orth.item())
        stats = {"final_loss": lm.item(), "final_harmless_penalty": penalty.item(),
                 "final_orthogonality_penalty": orth.item()}
    for a in adapters:
        a.last_delta = None
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return stats
