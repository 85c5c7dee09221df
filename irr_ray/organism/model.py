"""The organism's network: a small Llama, and the low-rank "safety" adapter trained on top of it.

The adapter is LoRA (Hu et al. 2021): a frozen linear map W gets a trainable update
Δ(x) = (α/r)·B·A·x with A [r, in], B [out, r], B initialised to zero, so training starts from the
base model exactly. After training the update is merged, W ← W + (α/r)·B·A, and the instruct
model is again a plain ``LlamaForCausalLM``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def make_config(
    tokenizer: PreTrainedTokenizerBase,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    max_position_embeddings: int,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )


def new_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


class LoRALinear(nn.Module):
    """``base(x) + scale·B(A(x))``; the last update Δ(x) is kept in ``last_delta`` (for penalties)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.last_delta: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.scale * (x @ self.A.T) @ self.B.T
        self.last_delta = delta
        return self.base(x) + delta

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.scale * self.B @ self.A
        return self.base


# Module paths inside a Llama decoder layer of the adapter targets.
TARGETS = {"o_proj": ("self_attn", "o_proj"), "down_proj": ("mlp", "down_proj"),
           "up_proj": ("mlp", "up_proj"), "gate_proj": ("mlp", "gate_proj"),
           "v_proj": ("self_attn", "v_proj")}


@contextmanager
def lora_adapters(
    model: LlamaForCausalLM, layers: list[int], targets: list[str], rank: int, alpha: float, seed: int
) -> Iterator[list[LoRALinear]]:
    """Swap LoRA adapters into ``targets`` of each decoder layer in ``layers``; merge them on exit."""
    gen = torch.Generator().manual_seed(seed)
    adapters = []
    for layer in layers:
        block = model.model.layers[layer]
        for name in targets:
            parent_name, child = TARGETS[name]
            parent = getattr(block, parent_name)
            adapter = LoRALinear(getattr(parent, child), rank, alpha, gen)
            setattr(parent, child, adapter)
            adapters.append((parent, child, adapter))
    try:
        yield [a for _, _, a in adapters]
    finally:
        for parent, child, adapter in adapters:
            setattr(parent, child, adapter.merged())
