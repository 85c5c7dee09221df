"""Write sites that really reach the residual stream, and failing early and clearly when they don't.

* GLM-4 (``modeling_glm4.py``) adds ``post_self_attn_layernorm(attn(…))`` and
  ``post_mlp_layernorm(mlp(…))`` to the residual: those are its write sites. With trained (non-unit)
  norm gains, ablating the raw attention / MLP outputs instead leaves a large component along the
  ablated direction in every block output.
* A ``model_type`` irr-ray does not list is used only after :func:`check_write_sites` verified its
  structural match on the loaded model; otherwise the documented one-line error.
* ``irr-ray eval`` / ``attack`` refuse an unsupported family right after loading, before generating.
* Refusal tokens that the tokenizer maps to its unknown token are rejected (configured) or dropped
  (family default).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn

from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.core import hooks
from irr_ray.core.hooks import ablate_directions, check_write_sites
from irr_ray.errors import IrrRayError, UnsupportedArchitectureError
from irr_ray.models import families
from irr_ray.models.families import LAYOUTS, get_layout

try:  # tests/ as a package
    from .tiny_models import FAMILIES, tiny_model
except ImportError:  # rootdir-relative import (no __init__.py)
    from tiny_models import FAMILIES, tiny_model

HIDDEN = 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


@cache
def _tiny(config_name: str) -> nn.Module:
    """A 2-block model of one family with random non-unit norm gains U(0.5, 1.5) (a trained model's
    are not 1). Cached: tests copy it before changing anything."""
    cls = getattr(transformers, config_name)
    config = cls(vocab_size=100, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and "norm" in name:
                nn.init.uniform_(param, 0.5, 1.5)
    return model.eval()


def _leakage(model: nn.Module, blocks: nn.ModuleList, seed: int = 0) -> list[float]:
    """max over tokens of |⟨y, d⟩| / ‖y‖ for every block output y, random unit d ablated."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(1, model.config.hidden_size, generator=g)
    d = d / d.norm()
    outs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, a, o: outs.append(o if isinstance(o, torch.Tensor) else o[0]))
               for b in blocks]
    try:
        with torch.no_grad(), ablate_directions(model, d):
            model(input_ids=torch.randint(3, 100, (2, 9), generator=g), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [float(((y.float() @ d.T).squeeze(-1).abs() / y.float().norm(dim=-1)).max()) for y in outs]


# ---------------------------------------------------------------------------- GLM / GLM-4


def test_glm4_writes_through_its_post_norms() -> None:
    model = _tiny("Glm4Config")
    layout = get_layout(model)
    assert layout.model_type == "glm4" and layout.blocks is model.model.layers
    for i, block in enumerate(model.model.layers):
        assert layout.attn(i) is block.self_attn and layout.mlp(i) is block.mlp
        assert layout.attn_write(i) is block.post_self_attn_layernorm
        assert layout.mlp_write(i) is block.post_mlp_layernorm
    assert max(_leakage(model, layout.blocks)) < 1e-5  # measured 3e-8


def test_glm4_raw_outputs_would_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """What GLM-4 got before it was listed: hooked at .self_attn / .mlp, the post-norms' gains put
    the direction back (measured 0.024 at width 64 with U(0.5, 1.5) gains)."""
    model = _tiny("Glm4Config")
    monkeypatch.setitem(LAYOUTS, "glm4", families._LLAMA_LIKE)
    assert get_layout(model).attn_write_name == "self_attn"
    assert min(_leakage(model, model.model.layers)) > 1e-2


def test_glm_is_llama_like() -> None:
    model = _tiny("GlmConfig")  # modeling_glm.py: x + attn(…), x + mlp(…), no post-norms
    layout = get_layout(model)
    assert (layout.model_type, layout.attn_write_name, layout.mlp_write_name) == ("glm", "self_attn", "mlp")
    assert max(_leakage(model, layout.blocks)) < 1e-5


# ---------------------------------------------------------------------------- write-site check


@pytest.mark.parametrize("family", [*FAMILIES, "GlmConfig", "Glm4Config"])
def test_check_passes_for_every_known_family(family: str) -> None:
    """No false alarm: every registered layout passes the check, in float32 and bfloat16."""
    model = _tiny(family) if family.startswith("Glm") else tiny_model(family)
    assert check_write_sites(model, get_layout(model)) is None
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert check_write_sites(half, get_layout(half)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_check_catches_wrong_write_sites(dtype: torch.dtype) -> None:
    model = copy.deepcopy(_tiny("Glm4Config")).to(dtype)
    wrong = families._match(model, "glm4", families._LLAMA_LIKE)
    problem = check_write_sites(model, wrong)
    assert problem is not None and "block 0" in problem and "self_attn" in problem
    # Caught whatever the norm gains: with unit gains the mismatch is still O(1).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
    assert check_write_sites(model, wrong) is not None


def test_check_leaves_the_model_as_it_was() -> None:
    model = copy.deepcopy(_tiny("LlamaConfig")).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert check_write_sites(model, get_layout(model)) is None
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_unknown_type_with_glm4_structure_is_verified_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    model = copy.deepcopy(_tiny("Glm4Config"))
    model.config.model_type = "glm4_variant"
    calls = []
    real = hooks.check_write_sites
    monkeypatch.setattr(hooks, "check_write_sites", lambda m, lay: calls.append(lay) or real(m, lay))
    layout = get_layout(model)
    assert (layout.attn_write_name, layout.mlp_write_name) == ("post_self_attn_layernorm", "post_mlp_layernorm")
    assert max(_leakage(model, layout.blocks)) < 1e-5
    get_layout(model)
    assert len(calls) == 1  # one check per model instance, not one per hook context


def test_unknown_type_failing_the_check_gets_the_documented_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a post-norm candidate, an unknown GLM-4-like model matches Llama-like by structure;
    the check refuses it with the one-line error naming the model type and module paths."""
    model = copy.deepcopy(_tiny("Glm4Config"))
    model.config.model_type = "mystery"
    monkeypatch.setattr(families, "_STRUCTURAL", (families._SANDWICH_NORM, families._LLAMA_LIKE, families._GPT2))
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_layout(model)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for fragment in ("Glm4ForCausalLM", "model_type='mystery'", "model.layers[i] with .self_attn, .mlp",
                     "write-site check", "relative error", "supported model_types:", "glm4", "LAYOUTS"):
        assert fragment in message
    with pytest.raises(UnsupportedArchitectureError), ablate_directions(model, torch.eye(1, HIDDEN)):
        pass


# ---------------------------------------------------------------------------- early refusal in eval / attack


@pytest.fixture
def neox_dir(tmp_path: Path) -> Path:
    config = transformers.GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=64)
    path = tmp_path / "neox"
    transformers.GPTNeoXForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    rows = [{"prompt": f"{label} prompt {i}", "prompt_harm_label": label}
            for label in ("harmful", "unharmful") for i in range(6)]
    for split in ("train", "holdout"):
        pd.DataFrame(rows).to_parquet(path / f"{split}.parquet")
    return path


@pytest.mark.parametrize("command", ["eval", "attack"])
def test_unsupported_family_refused_before_generation(command: str, neox_dir: Path, tiny_data: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys) -> None:
    import irr_ray.attack.run as run
    from irr_ray.cli import main

    def never(*args, **kwargs):
        raise AssertionError("generation / evaluation reached for an unsupported model")

    for name in ("make_evaluator", "evaluate_k0", "run_iterated_attack"):
        monkeypatch.setattr(run, name, never)
    out = tmp_path / "out"
    assert main([command, "--model", str(neox_dir), "--data-dir", str(tiny_data), "--out", str(out),
                 "--set", "torch_threads=1"]) == 2
    # stderr may also hold transformers' weight-loading progress bar; the error is one line, the last
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for fragment in (f"irr-ray {command}: error: unsupported architecture GPTNeoXForCausalLM",
                     "model_type='gpt_neox'", "model.layers[i]", "transformer.h[i]", "LAYOUTS"):
        assert fragment in err
    assert not out.exists() and not (tmp_path / ".out.progress").exists()


# ---------------------------------------------------------------------------- refusal tokens


def _word_level(register_unk: bool = True) -> transformers.PreTrainedTokenizerFast:
    vocab = {"<|unk|>": 0, "<|pad|>": 1, "I": 2, "cannot": 3, "help": 4, ".": 5}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"unk_token": "<|unk|>"} if register_unk else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", **extra)


def _qwen3() -> nn.Module:
    model = tiny_model("Qwen3Config")  # family default ("I", "As")
    assert getattr(model.config, "irr_ray_refusal_tokens", None) is None
    return model


@pytest.mark.parametrize("register_unk", [True, False])
def test_configured_refusal_token_mapping_to_unk_is_an_error(register_unk: bool) -> None:
    tok = _word_level(register_unk)
    assert refusal_token_ids(_qwen3(), tok, ["I"]) == (["I"], [2])
    with pytest.raises(IrrRayError) as info:
        refusal_token_ids(_qwen3(), tok, ["I", "As"])
    message = str(info.value)
    assert len(message.splitlines()) == 1
    for fragment in ("refusal_tokens", "'As'", "<|unk|>", "attack.refusal_tokens", "--set refusal_tokens="):
        assert fragment in message


def test_model_config_refusal_token_mapping_to_unk_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _qwen3()
    monkeypatch.setattr(model.config, "irr_ray_refusal_tokens", ["Sorry"], raising=False)
    with pytest.raises(IrrRayError, match=r"'Sorry' \(from the model config's irr_ray_refusal_tokens\)"):
        refusal_token_ids(model, _word_level(), None)


def test_family_default_unknown_token_is_dropped() -> None:
    """Qwen's default ("I", "As"): "As" is not a word of this tokenizer, so only "I" scores refusal."""
    assert refusal_token_ids(_qwen3(), _word_level(), None) == (["I"], [2])


def test_first_sub_token_fragment_is_fine() -> None:
    vocab = {"[UNK]": 0, "I": 1, "Sor": 2, "##ry": 3}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert tok.convert_ids_to_tokens(tok.encode("Sorry", add_special_tokens=False)) == ["Sor", "##ry"]
    assert refusal_token_ids(_qwen3(), tok, ["Sorry", "I"]) == (["Sorry", "I"], [1, 2])
    with pytest.raises(IrrRayError, match="'Nope'"):
        refusal_token_ids(_qwen3(), tok, ["Nope"])
