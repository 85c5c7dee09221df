"""Layout resolution per family (irr_ray.models.families) and the error for unsupported models."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from irr_ray.core.hooks import ablate_directions, capture_residuals
from irr_ray.errors import UnsupportedArchitectureError
from irr_ray.models.families import LAYOUTS, get_layout, model_type_of, refusal_tokens_for

try:  # tests/ as a package
    from .tiny_models import FAMILIES, N_LAYERS, SANDWICH_NORM, tiny_model
except ImportError:  # rootdir-relative import (no __init__.py)
    from tiny_models import FAMILIES, N_LAYERS, SANDWICH_NORM, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_of_every_family(family: str) -> None:
    model = tiny_model(family)
    layout = get_layout(model)
    assert layout.model_type == model.config.model_type in LAYOUTS
    assert layout.num_layers == N_LAYERS
    inner = model.transformer if family == "GPT2Config" else model.model
    expected_blocks = inner.h if family == "GPT2Config" else inner.layers
    assert layout.blocks is expected_blocks
    for i in range(N_LAYERS):
        block = layout.blocks[i]
        assert layout.attn(i) is getattr(block, "attn" if family == "GPT2Config" else "self_attn")
        assert layout.mlp(i) is block.mlp
        if family in SANDWICH_NORM:  # x ← x + post_norm(attn(…)): the post-norms are the write sites
            assert layout.attn_write(i) is block.post_attention_layernorm
            assert layout.mlp_write(i) is block.post_feedforward_layernorm
        else:
            assert layout.attn_write(i) is layout.attn(i)
            assert layout.mlp_write(i) is layout.mlp(i)
    assert refusal_tokens_for(layout.model_type)


def test_bare_base_model_resolves() -> None:
    """A headless LlamaModel / GPT2Model keeps its blocks at .layers / .h."""
    assert get_layout(tiny_model("LlamaConfig").model).blocks is tiny_model("LlamaConfig").model.layers
    assert get_layout(tiny_model("GPT2Config").transformer).blocks is tiny_model("GPT2Config").transformer.h


def test_unknown_model_type_matched_by_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unregistered model_type with a known module structure works, sandwich norms included."""
    for family, write in (("LlamaConfig", "self_attn"), ("Gemma2Config", "post_attention_layernorm")):
        model = tiny_model(family)
        monkeypatch.setattr(model.config, "model_type", "my_new_family")
        layout = get_layout(model)
        assert (layout.model_type, layout.attn_write_name) == ("my_new_family", write)
        monkeypatch.undo()
    assert refusal_tokens_for("my_new_family") == ("I",)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4)])  # right name, no attention / MLP inside


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return transformers.BertForMaskedLM(config)


def _t5() -> nn.Module:
    config = transformers.T5Config(vocab_size=100, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8)
    return transformers.T5ForConditionalGeneration(config)


@pytest.mark.parametrize(
    ("make", "name", "model_type"),
    [
        (_TinyNet, "_TinyNet", "None"),
        (_bert, "BertForMaskedLM", "bert"),
        (_t5, "T5ForConditionalGeneration", "t5"),
    ],
)
def test_unsupported_architecture_names_what_was_looked_for(make, name: str, model_type: str) -> None:
    model = make()
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_layout(model)
    message = str(info.value)
    for fragment in (
        name,
        f"model_type={model_type!r}",
        "model.layers[i]",
        "transformer.h[i]",
        ".self_attn",
        ".attn",
        "supported model_types: gemma",
        "LAYOUTS",
    ):
        assert fragment in message
    # Every entry point fails the same way, before touching the model.
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(UnsupportedArchitectureError):
        capture_residuals(model, ids, None)
    with pytest.raises(UnsupportedArchitectureError), ablate_directions(model, torch.eye(1, 32)):
        pass


def test_registered_model_type_with_wrong_structure_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known model_type is matched with its own layout only (no silent structural guess)."""
    model = tiny_model("GPT2Config")
    monkeypatch.setattr(model.config, "model_type", "llama")
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='llama'.*model\.layers\[i\]"):
        get_layout(model)


def test_gemma3_multimodal_config_maps_to_text_tower() -> None:
    text = transformers.Gemma3TextConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2)
    config = transformers.Gemma3Config(text_config=text.to_dict())
    holder = nn.Module()
    holder.config = config  # model_type_of only reads the config
    assert model_type_of(holder) == "gemma3_text"
