"""Prompt KV reuse: one prefill of a fixed prompt batch serves every later reply scored after it.

The behavioural evaluation (:mod:`irr_ray.attack.behaviour`) asks the same questions of the same
held-out prompts at every K: the first-token distribution at the last prompt position, and the NLL
of each greedy reply given its prompt under the unattacked reference model. Under causal attention
the prompt's keys and values do not depend on anything that follows it, so the reference's prompt
KV cache is computed once per evaluator (:func:`prefill_prompts`) and each later reply is scored by
a forward over the reply tokens alone (:func:`reply_nll_from_cache`).

Layout of one batch (rows i, prompt length ℓ_i, reply length n_i, P = max ℓ, R = max n)::

    [pad … pad  prompt_i (ℓ_i) | reply_i (n_i)  pad … pad]
     └──── cached: [B, P] ────┘ └───── fed: [B, R] ─────┘

The prompt is left-padded (as in generation), the reply right-padded behind it; the attention mask
is ``cat(prompt_mask, reply_mask)`` and reply token t sits at position ℓ_i + t, which is where it
sits in the unpadded sequence prompt_i ⊕ reply_i (and in the all-at-once left-padded forward of
:func:`irr_ray.core.scoring.continuation_nll`, whose positions count real tokens). Real tokens never
attend to padding, so the NLLs are those of the all-at-once forward up to float rounding (the padding
layout, hence the order of the attention sums, differs: ≤ 1e-6 nats on the organism,
``tests/attack/test_prefill_reuse.py``); a reply of R tokens costs R positions instead of ℓ + R.

Only plain dynamic caches (:class:`transformers.cache_utils.DynamicLayer` in every layer) are
reused; a model whose cache has sliding-window or other layers gets ``None`` from
:func:`prefill_prompts` and its caller falls back to the all-at-once forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from irr_ray.core.hooks import left_pad_position_ids

__all__ = ["PromptKV", "cache_kwarg", "kv_snapshot", "prefill_prompts", "reply_nll_from_cache"]


@dataclass(frozen=True)
class PromptKV:
    """One left-padded prompt batch after a prefill: its ids and mask [B, P], the keys and values
    of every layer ([B, H_kv, P, d_head] each), and the last prompt position's logits [B, V] (the
    model's dtype; the next-token distribution before any reply token)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    last_logits: torch.Tensor

    @property
    def prompt_lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(1)


def cache_kwarg(model: PreTrainedModel) -> str:
    """The forward's cache argument (``past_key_values``; ``cache`` in later transformers)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def kv_snapshot(cache: DynamicCache) -> tuple[tuple[torch.Tensor, torch.Tensor], ...] | None:
    """The (keys, values) of every layer as they are now, or None unless every layer is a plain
    :class:`DynamicLayer` (whose later updates concatenate into new tensors, so the snapshot stays
    valid while the cache goes on growing, shrinking or being trimmed)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return tuple((layer.keys, layer.values) for layer in layers)


@torch.inference_mode()
def prefill_prompts(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> PromptKV | None:
    """Prefill one left-padded batch (``input_ids`` / ``attention_mask``) with position ids that
    count real tokens (:func:`irr_ray.core.hooks.left_pad_position_ids`), the LM head at the last
    position only — the same forward as the first step of greedy generation. None when the cache
    cannot be snapshot (:func:`kv_snapshot`)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=left_pad_position_ids(mask), use_cache=True,
                logits_to_keep=1, **{cache_kwarg(model): cache})
    layers = kv_snapshot(cache)
    if layers is None:
        return None
    return PromptKV(ids, mask, layers, out.logits[:, -1, :])


@torch.inference_mode()
def reply_nll_from_cache(model: PreTrainedModel, prompt: PromptKV, reply_ids: Sequence[Sequence[int]],
                         pad_id: int) -> torch.Tensor:
    """ν_i = −1/(n_i − 1) · Σ_{t=2..n_i} log p(y_t | prompt_i, y_1 … y_{t−1}) per row, [B] float64
    on CPU, NaN for replies of ≤ 1 token: the reply tokens y [B, R] (right-padded) run through
    ``model`` on top of ``prompt``'s cached keys and values (module docstring). Token 1 is left out
    (it is predicted by the prompt's last position), as in
    :func:`irr_ray.core.scoring.continuation_nll`."""
    b = len(reply_ids)
    device = prompt.input_ids.device
    lengths = torch.tensor([len(r) for r in reply_ids], dtype=torch.long)
    out = torch.full((b,), float("nan"), dtype=torch.float64)
    r = int(lengths.max()) if b else 0
    if r < 2:
        return out
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(list(x), dtype=torch.long) for x in reply_ids],
                                          batch_first=True, padding_value=pad_id).to(device)
    reply_mask = (torch.arange(r).unsqueeze(0) < lengths.unsqueeze(1)).to(device=device,
                                                                          dtype=prompt.attention_mask.dtype)
    mask = torch.cat([prompt.attention_mask, reply_mask], dim=1)
    positions = prompt.prompt_lengths.unsqueeze(1) + torch.arange(r, device=device).unsqueeze(0)
    cache = DynamicCache(ddp_cache_data=prompt.layers, config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   **{cache_kwarg(model): cache}).logits.double()[:, :-1]
    targets = ids[:, 1:]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    keep = (torch.arange(1, r, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)).to(logp.dtype)
    n = keep.sum(1)
    nll = torch.where(n > 0, -(logp * keep).sum(1) / n.clamp_min(1), torch.nan)
    return nll.cpu()
