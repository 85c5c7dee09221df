"""Greedy generation with a chat template, left padding, batched — two engines, identical replies.

* ``"shrinking"`` (default): our own decode loop. The prompt batch is prefilled once into a
  :class:`~transformers.DynamicCache`, then one token per step is decoded from the cache. A row
  stops at its end-of-turn token and is dropped from the batch (input ids, attention mask, position
  ids and every cache layer), and leading cache columns that are padding for all remaining rows
  are cut off — so a step costs the rows still generating, not the whole batch until its longest
  reply ends. Position ids are explicit (:func:`irr_ray.core.hooks.left_pad_position_ids` at
  prefill, last + 1 per step), as HF ``generate`` computes them.
* ``"hf-generate"``: transformers ``generate`` per batch (kept for the benchmark and as a fallback).

Both decode greedily (argmax of the last position's float32 logits), stop at
``tokenizer.eos_token_id`` or ``max_new_tokens`` and decode with special tokens stripped.
``sort_by_length`` groups prompts of similar token length into batches (less padding); replies
come back in the prompts' order either way. Optional context managers (e.g. a directional ablation
from :mod:`irr_ray.core.hooks`) wrap each batch's whole prefill + decode loop, so the attack's
per-K evaluation reuses this path. Works on CPU and GPU.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from irr_ray.core.hooks import left_pad_position_ids
from irr_ray.models.chat import format_chat, tokenize_chat

ENGINES = ("shrinking", "hf-generate")


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    intervention: Callable[[], contextlib.AbstractContextManager] | None = None,
    engine: str = "hf-generate",
    sort_by_length: bool = False,
) -> list[str]:
    """Greedy completions (decoded, special tokens stripped) for each prompt, in order."""
    if engine not in ENGINES:
        raise ValueError(f"generate_greedy: unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    device = next(model.parameters()).device
    order = list(range(len(prompts)))
    if sort_by_length:
        lengths = [len(ids) for ids in tokenizer(format_chat(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenize_chat(tokenizer, [prompts[i] for i in rows], device=device)
        ctx = intervention() if intervention is not None else contextlib.nullcontext()
        with ctx:
            if engine == "hf-generate":
                tokens = _hf_generate(model, tokenizer, batch, max_new_tokens)
            else:
                tokens = _shrinking_generate(model, tokenizer.eos_token_id, batch, max_new_tokens)
        for i, text in zip(rows, tokenizer.batch_decode(tokens, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    return out


def _hf_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: dict[str, torch.Tensor],
                 max_new_tokens: int) -> list[list[int]]:
    gen = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return gen[:, batch["input_ids"].shape[1] :].tolist()


def _eos_set(eos: int | Sequence[int] | None) -> list[int]:
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _trim_left(cache: DynamicCache, cut: int) -> bool:
    """Drop the first ``cut`` sequence columns of every layer (plain dynamic layers only)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    for layer in layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys[:, :, cut:]
            layer.values = layer.values[:, :, cut:]
    return True


def _shrinking_generate(model: PreTrainedModel, eos: int | Sequence[int] | None, batch: dict[str, torch.Tensor],
                        max_new_tokens: int) -> list[list[int]]:
    """Prefill once, then decode from the KV cache, dropping rows as they emit end-of-turn."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n, device = ids.shape[0], ids.device
    eos_ids = torch.tensor(_eos_set(eos), dtype=torch.long, device=device)
    params = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in params
    cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
    cache = DynamicCache(config=model.config)
    tokens: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n, device=device)  # original row of each batch row
    positions = left_pad_position_ids(mask)
    step_ids = ids
    for _ in range(max_new_tokens):
        extra = {cache_kw: cache, **({"position_ids": positions} if takes_positions else {})}
        logits = model(input_ids=step_ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **extra).logits
        nxt = logits[:, -1, :].float().argmax(-1)
        for row, tok in zip(alive.tolist(), nxt.tolist(), strict=True):
            tokens[row].append(tok)
        done = torch.isin(nxt, eos_ids) if eos_ids.numel() else torch.zeros_like(nxt, dtype=torch.bool)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            alive, nxt, mask, positions = alive[keep], nxt[keep], mask[keep], positions[keep]
            cache.batch_select_indices(keep)
            cut = int(mask.argmax(1).min())  # leading columns that are padding for every remaining row
            if cut > 0 and _trim_left(cache, cut):
                mask = mask[:, cut:]
        step_ids = nxt.unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
    return tokens
