"""Greedy generation with a chat template, left padding, batched — two engines, identical replies.

* ``"shrinking"`` (the attack's default, ``attack.generation.engine``): our own decode loop. The
  prompt batch is prefilled once into a :class:`~transformers.DynamicCache`, then one token per step
  is decoded from the cache. A row stops at its end-of-turn token and is dropped from the batch
  (input ids, attention mask, position ids and every cache layer), and leading cache columns that
  are padding for all remaining rows are cut off — so a step costs the rows still generating, not
  the whole batch until its longest reply ends. Position ids are explicit
  (:func:`irr_ray.core.hooks.left_pad_position_ids` at prefill, last + 1 per step), as HF
  ``generate`` computes them. The prefill is the same forward as a separate last-position pass
  (:func:`irr_ray.generation.prefix.prefill_prompts`), so :func:`generate_greedy_prefill` also
  returns its logits (the first-token distribution under whatever intervention is active) and, on
  request, its prompt KV cache.
* ``"hf-generate"``: transformers ``generate`` per batch (the function's default, as the data
  stage uses it; the attack's plain path for ``irr-ray bench attack --stage``).

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
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from irr_ray.core.hooks import left_pad_position_ids
from irr_ray.generation.prefix import PromptKV, cache_kwarg, kv_snapshot
from irr_ray.models.chat import format_chat, tokenize_chat

ENGINES = ("shrinking", "hf-generate")


@dataclass
class GreedyResult:
    """Replies (prompts' order), the prefill's last-position logits [N, V] (model dtype, prompts'
    order) and, when asked for, each batch's prompt KV with its rows (``None`` where the model's
    cache cannot be snapshot, :func:`irr_ray.generation.prefix.kv_snapshot`)."""

    replies: list[str]
    first_logits: torch.Tensor | None = None
    prompt_kv: list[tuple[list[int], PromptKV | None]] | None = None


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
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, intervention, engine, sort_by_length,
                     prefill=False, keep_prompt_kv=False).replies


@torch.inference_mode()
def generate_greedy_prefill(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    intervention: Callable[[], contextlib.AbstractContextManager] | None = None,
    sort_by_length: bool = False,
    keep_prompt_kv: bool = False,
) -> GreedyResult:
    """:func:`generate_greedy` with the shrinking engine, also returning the prefill's logits at the
    last prompt position (bit-identical to a separate ``use_cache=False, logits_to_keep=1`` forward
    under the same intervention, ``tests/attack/test_prefill_reuse.py``) and, with
    ``keep_prompt_kv``, each batch's prompt keys and values (snapshots taken right after the prefill)."""
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, intervention, "shrinking",
                     sort_by_length, prefill=True, keep_prompt_kv=keep_prompt_kv)


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
              max_new_tokens: int, batch_size: int,
              intervention: Callable[[], contextlib.AbstractContextManager] | None, engine: str,
              sort_by_length: bool, prefill: bool, keep_prompt_kv: bool) -> GreedyResult:
    if engine not in ENGINES:
        raise ValueError(f"generate_greedy: unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    device = next(model.parameters()).device
    order = list(range(len(prompts)))
    if sort_by_length:
        lengths = [len(ids) for ids in tokenizer(format_chat(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
        order.sort(key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    result = GreedyResult(out, None, [] if keep_prompt_kv else None)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenize_chat(tokenizer, [prompts[i] for i in rows], device=device)
        ctx = intervention() if intervention is not None else contextlib.nullcontext()
        with ctx:
            if engine == "hf-generate":
                tokens = _hf_generate(model, tokenizer, batch, max_new_tokens)
            else:
                tokens, first, kv = _shrinking_generate(model, tokenizer.eos_token_id, batch, max_new_tokens,
                                                        keep_prompt_kv)
        if prefill:
            if result.first_logits is None:
                result.first_logits = first.new_empty((len(prompts), first.shape[-1]))
            result.first_logits[torch.tensor(rows, device=first.device)] = first
        if keep_prompt_kv:
            result.prompt_kv.append((rows, None if kv is None else PromptKV(batch["input_ids"], batch["attention_mask"],
                                                                            kv, first)))
        for i, text in zip(rows, tokenizer.batch_decode(tokens, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    return result


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


def _shrinking_generate(
    model: PreTrainedModel, eos: int | Sequence[int] | None, batch: dict[str, torch.Tensor], max_new_tokens: int,
    keep_prompt_kv: bool = False,
) -> tuple[list[list[int]], torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...] | None]:
    """Prefill once, then decode from the KV cache, dropping rows as they emit end-of-turn.

    Returns each row's tokens (up to and including its end-of-turn token), the prefill's logits at
    the last prompt position [B, V] and, with ``keep_prompt_kv``, the prompt's cached keys and values.
    The generated tokens go into one [B, max_new_tokens] buffer (step s writes column s of the rows
    still alive), cut per row at the end."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n, device = ids.shape[0], ids.device
    eos_ids = torch.tensor(_eos_set(eos), dtype=torch.long, device=device)
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    cache_kw = cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    buffer = torch.full((n, max_new_tokens), -1, dtype=torch.long, device=device)
    alive = torch.arange(n, device=device)  # original row of each batch row
    positions = left_pad_position_ids(mask)
    step_ids = ids
    first: torch.Tensor | None = None
    kv = None
    for step in range(max_new_tokens):
        extra = {cache_kw: cache, **({"position_ids": positions} if takes_positions else {})}
        logits = model(input_ids=step_ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **extra).logits
        if first is None:
            first = logits[:, -1, :]
            kv = kv_snapshot(cache) if keep_prompt_kv else None
        nxt = logits[:, -1, :].float().argmax(-1)
        buffer[alive, step] = nxt
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
    counts = (buffer >= 0).sum(1).tolist()  # a row's tokens are a prefix of its buffer row
    tokens = [row[:c] for row, c in zip(buffer.tolist(), counts, strict=True)]
    assert first is not None
    return tokens, first, kv
