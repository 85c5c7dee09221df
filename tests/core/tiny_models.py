"""Tiny random decoder models of every supported family, built from config classes (no downloads).

A plain helper module (no fixtures): the hook, scoring and family tests import it.
Each model: 2 blocks, hidden 32, vocab 100, float32, weights from ``torch.manual_seed(0)``, with
randomised norm gains and biases.
"""

from __future__ import annotations

from functools import cache

import torch
import transformers
from torch import nn

VOCAB = 100
HIDDEN = 32
N_LAYERS = 2

_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# config class name -> extra kwargs; head_dim given where the config's default is not hidden/heads.
FAMILY_CONFIGS: dict[str, dict[str, object]] = {
    "LlamaConfig": {},
    "MistralConfig": {},
    "Qwen2Config": {},
    "Qwen3Config": {"head_dim": 8},
    "GemmaConfig": {"head_dim": 8},
    "Gemma2Config": {"head_dim": 8},
    "Gemma3TextConfig": {"head_dim": 8},
    "Phi3Config": {},
    "OlmoConfig": {},
    "Olmo2Config": {},
    "Olmo3Config": {},
    "GraniteConfig": {},
    "GPT2Config": {},
}
FAMILIES = tuple(FAMILY_CONFIGS)
# Families whose residual writes go through post-norms (sandwich norm).
SANDWICH_NORM = {"Gemma2Config", "Gemma3TextConfig", "Olmo2Config", "Olmo3Config"}


@cache
def tiny_model(config_name: str) -> nn.Module:
    """The tiny causal LM of one family in eval mode (cached: tests must leave it unhooked)."""
    cls = getattr(transformers, config_name)
    if config_name == "GPT2Config":
        config = cls(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=N_LAYERS, n_head=4, n_positions=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        config = cls(**_DECODER, **FAMILY_CONFIGS[config_name])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init leaves norm gains at 1 and biases at 0; a trained model's are neither. Random
    # per-channel gains make a post-norm re-introduce a direction projected out before it, which
    # is what the ablation tests must catch (Gemma2/3, OLMo2/3 write through post-norms).
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.5 * torch.randn_like(param))
    return model.eval()


def left_padded_batch(lengths: tuple[int, ...] = (7, 5, 3), seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids (≥ 3, never special) left-padded to max(lengths) with pad id 0."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, t - n:] = 1
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
