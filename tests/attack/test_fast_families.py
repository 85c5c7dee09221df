"""Fast scoring equals the reference on tiny random models of other layouts (GPT-2: absolute
positions and a different block container; Gemma-2: sandwich norms; Qwen2), the induce pass
really restarts from the cached residual there too, under both KL baselines, and lazy scoring's
survivor path and its fallback bound choose what the reference chooses."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.scoring import ReferenceScorer, make_scorer
from irr_ray.bench.attack import organism_prompts
from irr_ray.core.directions import orthonormalize
from irr_ray.models.families import get_layout
from irr_ray.organism.tokenizer import build_tokenizer

TINY = {
    "gpt2": {"n_embd": 32, "n_layer": 3, "n_head": 2, "n_positions": 128},
    "gemma2": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 16},
    "qwen2": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1},
}


@pytest.mark.parametrize("kl_baseline", ["previous", "original"])
@pytest.mark.parametrize("model_type", sorted(TINY))
def test_fast_matches_reference_on_family(model_type: str, kl_baseline: str) -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **TINY[model_type])
    model = AutoModelForCausalLM.from_config(config).eval()
    cfg = AttackConfig(extract_n=16, score_n=6, score_all=True, length_buckets=2, kl_threshold=10.0,
                       induce_threshold=-100.0, kl_baseline=kl_baseline)
    extract, score = organism_prompts(cfg.extract_n, cfg.score_n)
    ids = [tokenizer.convert_tokens_to_ids("I")]
    harmful = encode_batches(tokenizer, extract.harmful, 16)
    harmless = encode_batches(tokenizer, extract.harmless, 16)
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    fast, reference = make_scorer(model, tokenizer, score, ids, cfg), ReferenceScorer(model, tokenizer, score, ids, cfg)
    lazy = make_scorer(model, tokenizer, score, ids, cfg.model_copy(update={"score_all": False}))
    chosen: list[torch.Tensor] = []
    for _k in (1, 2):
        q = orthonormalize(torch.stack(chosen)) if chosen else None
        candidates = mean_difference_candidates(model, harmful, harmless, layers, cfg.positions, q)
        got, want = fast.score(candidates, chosen), reference.score(candidates, chosen)
        for f, r in zip(got, want, strict=True):
            for key in ("refusal_score", "kl", "induce_score"):
                assert getattr(f, key) == pytest.approx(getattr(r, key), abs=1e-4), (model_type, key, r.layer)
        pick = select_direction(want, cfg)
        assert select_direction(got, cfg) == pick
        # every candidate survives these thresholds: lazy scoring stops at the lowest refusal
        lazy_got = lazy.score(candidates, chosen)
        assert select_direction(lazy_got, cfg) == pick
        for key in ("refusal_score", "kl", "induce_score"):
            assert getattr(lazy_got[pick], key) == pytest.approx(getattr(want[pick], key), abs=1e-4)
        chosen.append(candidates[pick].vector)
    assert fast.restart_ok is True


def test_lazy_fallback_bound_matches_full_scoring() -> None:
    """No survivor (induce threshold out of reach): the bounded fallback picks argmin(refusal + α·KL)
    as full scoring does, leaving KL unscored (NaN) only where refusal alone rules a candidate out."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), **TINY["qwen2"])
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = [tokenizer.convert_tokens_to_ids("I")]
    extract, score = organism_prompts(16, 6)
    harmful = encode_batches(tokenizer, extract.harmful, 16)
    harmless = encode_batches(tokenizer, extract.harmless, 16)
    candidates = mean_difference_candidates(model, harmful, harmless, [0, 1, 2], [-3, -2, -1])
    for alpha in (0.0, 1.0, 1e4):
        cfg = AttackConfig(extract_n=16, score_n=6, induce_threshold=1e9, kl_alpha=alpha)
        full = make_scorer(model, tokenizer, score, ids, cfg.model_copy(update={"score_all": True}))
        lazy = make_scorer(model, tokenizer, score, ids, cfg)
        want, got = full.score(candidates, []), lazy.score(candidates, [])
        pick = select_direction(want, cfg)
        assert select_direction(got, cfg) == pick
        assert got[pick].kl == pytest.approx(want[pick].kl, abs=1e-6)
        best = want[pick].refusal_score + alpha * want[pick].kl
        for g, w in zip(got, want, strict=True):
            assert (math.isnan(g.kl) and w.refusal_score > best) or g.kl == pytest.approx(w.kl, abs=1e-6)
