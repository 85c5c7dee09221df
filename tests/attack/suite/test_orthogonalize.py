"""orthogonalize: weight orthogonalisation equals the three-site hook ablation where it can.

Measured here (float32, random orthonormal Q with K = 2, random token sequences):

* exact variant on tiny random Llama (also tied), Qwen2, Mistral, Phi-3 and GPT-2 models: logits
  equal those under :func:`irr_ray.core.hooks.ablate_directions` within 1e-4 (observed ~2e-6, while
  the ablation itself moves logits by O(1));
* Gemma2 / OLMo2 (post-norm families): the default refuses in one line; the explicit approximation's
  logit difference from the hook ablation is measured and asserted nonzero (observed ≈ 0.065 / 0.074
  against an ablation effect of ≈ 1.3 / 1.6);
* norm-preserving variant: row norms kept, the direction mostly removed, harmless projection;
* ``irr-ray abliterate`` round trip on the organism; the attack on the organism (refusal drops,
  parameters restored, resume from the work dir, artifacts).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
)

from irr_ray.attack.suite.orthogonalize import ARTIFACT, OrthogonalizeAttack, orthogonalized
from irr_ray.attack.suite.settings import OrthogonalizeSettings
from irr_ray.core.directions import load_directions, orthonormalize, save_directions
from irr_ray.core.hooks import ablate_directions
from irr_ray.core.orthogonalize import orthogonalize_weights, project_against_harmless, residual_writers
from irr_ray.core.scoring import last_position_logits
from irr_ray.errors import IrrRayError
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.families import get_layout

torch.set_num_threads(1)

D, V = 64, 101
_KW = dict(hidden_size=D, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1)


def _config(family: str):
    if family == "llama":
        return LlamaConfig(**_KW)
    if family == "llama_tied":
        return LlamaConfig(**_KW, tie_word_embeddings=True)
    if family == "qwen2":
        return Qwen2Config(**_KW)
    if family == "mistral":
        return MistralConfig(**_KW)
    if family == "phi3":
        return Phi3Config(**_KW)
    if family == "gpt2":
        return GPT2Config(n_embd=D, n_layer=2, n_head=4, vocab_size=V, n_positions=32, bos_token_id=1,
                          eos_token_id=2, initializer_range=0.1)
    if family == "gemma2":
        return Gemma2Config(**_KW, head_dim=16)
    if family == "olmo2":
        return Olmo2Config(**_KW)
    raise ValueError(family)


def _tiny(family: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family)).float().eval().requires_grad_(False)
    q = torch.linalg.qr(torch.randn(D, 2))[0].T.contiguous()  # [2, D] orthonormal
    ids = torch.randint(3, V, (3, 9))
    return model, q, ids


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_restored(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("family", ["llama", "llama_tied", "qwen2", "mistral", "phi3", "gpt2"])
def test_exact_orthogonalisation_equals_hook_ablation(family: str) -> None:
    model, q, ids = _tiny(family)
    before = _state(model)
    clean = _logits(model, ids)
    with ablate_directions(model, q):
        hooked = _logits(model, ids)
    edit = orthogonalize_weights(model, q)
    assert not edit.approximate
    tied = family in ("llama_tied", "gpt2")
    assert bool(edit.untied) == tied and edit.config_updates() == ({"tie_word_embeddings": False} if tied else {})
    with orthogonalized(model, edit):
        edited = _logits(model, ids)
        if tied:  # the unembedding keeps the original embeddings while the input embedding is edited
            assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
            assert torch.equal(model.get_output_embeddings().weight, before[next(iter(edit.untied))])
    effect, err = float((hooked - clean).abs().max()), float((edited - hooked).abs().max())
    print(f"{family}: max |orthogonalised − hook-ablated| = {err:.2e} (ablation effect {effect:.3f})")
    assert effect > 0.1  # the comparison is not vacuous
    assert err < 1e-4
    _assert_restored(model, before)
    if tied:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    # the edit covers what it should: embeddings (+ GPT-2 wpe), 2 projections per block, their biases
    kinds = [w.kind for w in residual_writers(model)]
    assert kinds.count("linear") + kinds.count("conv1d") == 4
    assert kinds.count("embedding") == (2 if family == "gpt2" else 1)
    assert kinds.count("bias") == (4 if family == "gpt2" else 0)


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_post_norm_family_is_refused_unless_approximate(family: str, record_property) -> None:
    model, q, ids = _tiny(family)
    with pytest.raises(IrrRayError) as info:
        orthogonalize_weights(model, q)
    message = str(info.value)
    assert "\n" not in message and repr(family) in message and "approximate" in message
    clean = _logits(model, ids)
    with ablate_directions(model, q):
        hooked = _logits(model, ids)
    edit = orthogonalize_weights(model, q, approximate=True)
    assert edit.approximate
    with orthogonalized(model, edit):
        approx = _logits(model, ids)
    effect, err = float((hooked - clean).abs().max()), float((approx - hooked).abs().max())
    print(f"{family} (approximation): max |edited − hook-ablated| = {err:.3g}, ablation effect {effect:.3g}")
    record_property("approximation_error", err)
    # Honest: the approximation is NOT the ablation (observed 0.065 for gemma2, 0.074 for olmo2) …
    assert err > 1e-3
    # … though much closer to it than the unedited model is (observed ratio ≈ 0.05).
    assert err < 0.25 * effect


def test_norm_preserving_variant_keeps_row_norms_and_removes_most_of_the_direction() -> None:
    for family in ("llama", "gpt2"):
        model, q, _ = _tiny(family)
        params = dict(model.named_parameters(remove_duplicate=False))
        edit = orthogonalize_weights(model, q, variant="norm_preserving")
        for w in residual_writers(model):
            old, new = params[w.name].detach().double(), edit.replacements[w.name].double()
            old_r, new_r = old.movedim(w.axis, -1), new.movedim(w.axis, -1)  # residual axis last
            if w.kind == "bias":
                torch.testing.assert_close(new_r, old_r - (old_r @ q.double().T) @ q.double())
                continue
            # one norm per residual coordinate, over the input dimension (heretic's row_normalization)
            rows_old = old.movedim(w.axis, 0).reshape(D, -1).norm(dim=1)
            rows_new = new.movedim(w.axis, 0).reshape(D, -1).norm(dim=1)
            torch.testing.assert_close(rows_new, rows_old, rtol=1e-5, atol=1e-6)
            left = float((new_r @ q.double().T).norm() / (old_r @ q.double().T).norm())
            assert left < 0.2, (family, w.name, left)  # approximate removal: a small component returns


def test_harmless_projection() -> None:
    torch.manual_seed(1)
    r, mu = torch.randn(2, D), torch.randn(D)
    p = project_against_harmless(r, mu)
    torch.testing.assert_close(p @ p.T, torch.eye(2), atol=1e-5, rtol=0)
    assert float((p @ torch.nn.functional.normalize(mu, dim=0)).abs().max()) < 1e-5
    assert float(p[0] @ torch.nn.functional.normalize(r[0], dim=0)) > 0  # sign kept
    per_row = project_against_harmless(r, torch.stack([mu, -mu]))
    torch.testing.assert_close(per_row, p)


def test_bad_directions_are_rejected() -> None:
    model, q, _ = _tiny("llama")
    with pytest.raises(ValueError, match="orthonormal"):
        orthogonalize_weights(model, q * 2)
    with pytest.raises(ValueError, match="hidden size"):
        orthogonalize_weights(model, torch.eye(3, D + 1))
    with pytest.raises(ValueError, match="variant"):
        orthogonalize_weights(model, q, variant="fancy")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the organism


def test_abliterate_command_round_trip(organism_dir: Path, tmp_path: Path) -> None:
    from irr_ray.cli import main

    src = organism_dir / "instruct"
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=torch.float32).eval()
    width = model.config.hidden_size
    torch.manual_seed(2)
    direction = torch.nn.functional.normalize(torch.randn(1, width), dim=1)
    save_directions(tmp_path / "d.safetensors", direction, {"kind": "test"})
    out = tmp_path / "abliterated"
    assert main(["abliterate", "--model", str(src), "--directions", str(tmp_path / "d.safetensors"),
                 "--out", str(out), "--k", "1"]) == 0
    edited = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
    ids = torch.randint(4, model.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(3))
    with ablate_directions(model, direction):
        hooked = _logits(model, ids)
    err, effect = float((_logits(edited, ids) - hooked).abs().max()), float((_logits(model, ids) - hooked).abs().max())
    print(f"organism round trip: max |checkpoint − hook-ablated| = {err:.2e} (ablation effect {effect:.3f})")
    assert effect > 1e-2 and err < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # the organism ties them: saved untied
    assert config["irr_ray_refusal_tokens"] == model.config.irr_ray_refusal_tokens
    torch.testing.assert_close(edited.get_output_embeddings().weight, model.get_input_embeddings().weight,
                               rtol=0, atol=0)
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (out / "tokenizer_config.json").read_text())
    provenance = json.loads((out / "abliteration.json").read_text())
    assert provenance["k"] == 1 and provenance["variant"] == "exact" and provenance["untied_embeddings"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".abliterated")]  # no temp left behind


def _refusal_probability(ctx, prompts: list[str]) -> float:
    """Mean first-token probability of the refusal tokens on the chat-formatted prompts."""
    batch = tokenize_chat(ctx.tokenizer, prompts, device=ctx.device)
    with torch.no_grad():
        probs = torch.softmax(last_position_logits(ctx.model, batch["input_ids"], batch["attention_mask"]).double(), -1)
    return float(probs[:, ctx.refusal_ids].sum(-1).mean())


def test_attack_on_the_organism(make_context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = dataclasses.replace(make_context("instruct"), work_dir=tmp_path / "work")
    ctx.work_dir.mkdir()
    model = ctx.model
    before = _state(model)
    harmful = ctx.prompts.eval.harmful[:24]
    p0 = _refusal_probability(ctx, harmful)

    attack = OrthogonalizeAttack(OrthogonalizeSettings(budgets=[1], directions="extract"))  # norm_preserving
    step = attack.step(ctx, 1)
    assert step.info["n_directions"] == 1 and step.info["source"] == "extract"
    assert step.info["variant"] == "norm_preserving" and step.info["untied_embeddings"]
    with step.intervention():
        p1 = _refusal_probability(ctx, harmful)
    print(f"organism: first-token refusal probability on harmful prompts {p0:.3f} -> {p1:.3f} (norm_preserving; "
          f"layer {step.info['layers']}, cos(r, harmless mean) {step.info['harmless_cos']})")
    assert p0 > 0.5 and p1 < 0.5 * p0
    _assert_restored(model, before)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    attack.write_artifacts(tmp_path)
    used, meta = load_directions(tmp_path / ARTIFACT)
    assert used.shape == (1, model.config.hidden_size) and meta["variant"] == "norm_preserving"

    # exact variant, same config: the extracted direction is reused from the work dir (no extraction)
    # and the edit equals the hook ablation of that direction on the organism
    import irr_ray.attack.suite.orthogonalize as module

    monkeypatch.setattr(module, "mean_difference_candidates", lambda *a, **k: pytest.fail("extracted again"))
    exact = OrthogonalizeAttack(OrthogonalizeSettings(budgets=[1], directions="extract", variant="exact"))
    step = exact.step(ctx, 1)
    raw, _ = load_directions(ctx.work_dir / "orthogonalize_raw.safetensors")
    q = orthonormalize(raw[:1])
    assert exact._raw and torch.equal(exact._raw[0], raw[0])
    batch = tokenize_chat(ctx.tokenizer, harmful[:8], device=ctx.device)
    with torch.no_grad(), ablate_directions(model, q):
        hooked = last_position_logits(model, batch["input_ids"], batch["attention_mask"])
    with torch.no_grad(), step.intervention():
        edited = last_position_logits(model, batch["input_ids"], batch["attention_mask"])
    assert float((edited - hooked).abs().max()) < 1e-4
    _assert_restored(model, before)


def test_attack_reuses_dim_directions(make_context, tmp_path: Path) -> None:
    base = make_context("instruct")
    width = base.model.config.hidden_size
    torch.manual_seed(4)
    dim = orthonormalize(torch.randn(3, width))
    n = get_layout(base.model).num_layers
    layers = [n // 2, n // 2 + 1, n - 1]
    ctx = dataclasses.replace(base, work_dir=tmp_path, dim_directions=dim, dim_layers=layers)
    attack = OrthogonalizeAttack(OrthogonalizeSettings(budgets=[2], variant="exact"))
    attack._extract = lambda *a: pytest.fail("extracted although dim directions exist")  # type: ignore[method-assign]
    step = attack.step(ctx, 2)
    assert step.info["source"] == "dim" and step.info["layers"] == layers[:2] and step.info["n_directions"] == 2
    ids = torch.randint(4, base.model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(5))
    with ablate_directions(ctx.model, dim[:2]):
        hooked = _logits(ctx.model, ids)
    with step.intervention():
        edited = _logits(ctx.model, ids)
    assert float((edited - hooked).abs().max()) < 1e-4
