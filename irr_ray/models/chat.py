"""Prompt formatting: the model's own chat template with the generation prompt (the method's input)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from irr_ray.errors import IrrRayError


def format_chat(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[str]:
    """Each prompt as a single user turn rendered by the tokenizer's chat template,
    ending with the assistant generation prompt (``add_generation_prompt=True``)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise IrrRayError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "use an instruct model's tokenizer or set one"
        )
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_length: int | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Chat-format and tokenise a batch with left padding -> ``input_ids``, ``attention_mask``.

    The chat template already contains the BOS token, so no special tokens are added again.
    """
    texts = format_chat(tokenizer, prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
            truncation=max_length is not None,
            max_length=max_length,
        )
    finally:
        tokenizer.padding_side = old_side
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}
