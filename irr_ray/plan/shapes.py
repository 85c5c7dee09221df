"""The shape of a decoder-only transformer, as FLOP counting needs it (no weights, no I/O).

A :class:`ModelShape` carries the attributes :func:`irr_ray.bench.attack.forward_flops` reads
(``hidden_size``, ``intermediate_size``, ``num_hidden_layers``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``vocab_size``), so every count here goes through the same
forward formula as the attack benchmark. A shape comes from a model's ``config.json`` (read by
:mod:`irr_ray.plan.study` where the model is local or in the Hugging Face cache) or from
:data:`KNOWN_SHAPES`, a named table of the models the shipped studies use; anything else is an
error naming the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from irr_ray.bench.attack import LLAMA_1B
from irr_ray.errors import ConfigError


@dataclass(frozen=True)
class ModelShape:
    """Llama-style block: attention (Q, O: D×H·d; K, V: D×H_kv·d), gated MLP (3·D·F), an LM head."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = True

    @property
    def block_weights(self) -> int:
        """Matmul weights of one block: 2·D·H·d (Q, O) + 2·D·H_kv·d (K, V) + 3·D·F (gate, up, down)."""
        d, hd = self.hidden_size, self.head_dim
        return 2 * d * self.num_attention_heads * hd + 2 * d * self.num_key_value_heads * hd \
            + 3 * d * self.intermediate_size

    @property
    def params(self) -> int:
        """All parameters but the norms: L·block + V·D embedding (+ V·D head when untied)."""
        embed = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * self.block_weights + embed * (1 if self.tie_word_embeddings else 2)

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> ModelShape:
        """From a Hugging Face ``config.json`` (Llama, Mistral, Qwen2 and other Llama-style keys)."""
        try:
            d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(name=name, hidden_size=d, intermediate_size=int(config["intermediate_size"]),
                       num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
                       num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or d // heads), vocab_size=int(config["vocab_size"]),
                       tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"model {name}: config.json lacks a Llama-style shape ({exc})") from None


LLAMA_3_2_1B = ModelShape.from_config("Llama-3.2-1B", LLAMA_1B)
# WildGuard-7B is Mistral-7B-v0.3 fine-tuned (Han et al. 2024, "WildGuard"; the v0.3 config.json):
# 7.25e9 parameters, the 7.24e9 of irr_ray.bench.attack.WILDGUARD_PARAMS to rounding.
WILDGUARD_7B = ModelShape(name="WildGuard-7B (Mistral-7B-v0.3 shape)", hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32768,
                          tie_word_embeddings=False)

KNOWN_SHAPES: dict[str, ModelShape] = {
    "meta-llama/Llama-3.2-1B-Instruct": LLAMA_3_2_1B,
    "meta-llama/Llama-3.2-1B": LLAMA_3_2_1B,
    "allenai/wildguard": WILDGUARD_7B,
}


def known_shape(model: str) -> ModelShape:
    """The table's shape of hub id ``model``; an unknown model is a one-line error naming it."""
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    raise ConfigError(f"model {model}: shape unknown (not a local model directory, not in the Hugging Face cache, "
                      f"not one of {', '.join(sorted(KNOWN_SHAPES))}); download its config.json or plan with a "
                      "local copy")
