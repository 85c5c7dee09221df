"""Greedy generation with transformers ``generate``: chat template, left padding, batched.

Works on CPU and GPU. Optional context managers (e.g. a directional ablation from
:mod:`irr_ray.core.hooks`) wrap each batch, so the attack's per-K evaluation reuses this path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.models.chat import tokenize_chat


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    intervention: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> list[str]:
    """Greedy completions (decoded, special tokens stripped) for each prompt, in order."""
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenize_chat(tokenizer, prompts[start : start + batch_size], device=device)
        ctx = intervention() if intervention is not None else contextlib.nullcontext()
        with ctx:
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
        new_tokens = gen[:, batch["input_ids"].shape[1] :]
        out.extend(t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return out
