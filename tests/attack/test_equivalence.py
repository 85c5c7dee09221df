"""The fast scorer is the reference, faster: same scores (1e-4) and the same choices for K = 1…3,
under both KL baselines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.attack.scoring import ReferenceScorer, make_scorer
from irr_ray.core.directions import orthonormalize
from irr_ray.models.families import get_layout
from irr_ray.models.loading import load_model, load_tokenizer


@pytest.mark.parametrize("kl_baseline", ["previous", "original"])
def test_fast_and_reference_choose_the_same_directions(organism_dir: Path, study_data: Path, kl_baseline: str) -> None:
    torch.set_num_threads(1)
    cfg = AttackConfig(extract_n=64, score_n=32, torch_threads=1, kl_baseline=kl_baseline)
    path = str(Path(organism_dir) / "instruct")
    model, tokenizer = load_model(path, device="cpu"), load_tokenizer(path)
    prompts = load_prompt_sets(study_data, cfg)
    _, ids = refusal_token_ids(model, tokenizer, None)
    reference = ReferenceScorer(model, tokenizer, prompts.score, ids, cfg)
    full = make_scorer(model, tokenizer, prompts.score, ids, cfg.model_copy(update={"score_all": True}))
    lazy = make_scorer(model, tokenizer, prompts.score, ids, cfg)
    harmful = encode_batches(tokenizer, prompts.extract.harmful, 32)
    harmless = encode_batches(tokenizer, prompts.extract.harmless, 32)
    layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
    assert layers == [1, 2, 3, 4]  # the organism: L = 6, residual indices 1 … int(0.8·6)

    chosen: list[torch.Tensor] = []
    for _k in (1, 2, 3):
        q = orthonormalize(torch.stack(chosen)) if chosen else None
        candidates = mean_difference_candidates(model, harmful, harmless, layers, cfg.positions, q)
        ref_scores = reference.score(candidates, chosen)
        all_scores = full.score(candidates, chosen)
        lazy_scores = lazy.score(candidates, chosen)
        for r, f in zip(ref_scores, all_scores, strict=True):
            assert (f.layer, f.position) == (r.layer, r.position)
            for key in ("refusal_score", "kl", "induce_score", "norm"):
                assert getattr(f, key) == pytest.approx(getattr(r, key), abs=1e-4), (key, r.layer, r.position)
        pick = select_direction(ref_scores, cfg)
        assert select_direction(all_scores, cfg) == pick
        assert select_direction(lazy_scores, cfg) == pick
        for key in ("refusal_score", "kl", "induce_score"):
            assert getattr(lazy_scores[pick], key) == pytest.approx(getattr(ref_scores[pick], key), abs=1e-4)
        # lazy scoring stops early: candidates it did not need carry NaN, never a wrong number
        for r, f in zip(ref_scores, lazy_scores, strict=True):
            assert math.isnan(f.kl) or f.kl == pytest.approx(r.kl, abs=1e-4)
        chosen.append(candidates[pick].vector)
    assert full.restart_ok and lazy.restart_ok is not False  # the induce pass really restarted
