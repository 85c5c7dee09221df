"""The shrinking decode loop (prefill once, decode from the KV cache, drop rows at end-of-turn,
cut all-padding cache columns) gives string-equal greedy replies to HF ``generate`` on the organism,
with and without a directional ablation hooked into every forward. Speed: ``irr-ray bench attack
--eval-split`` (never timed here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates
from irr_ray.core.hooks import ablate_directions
from irr_ray.generation.hf import generate_greedy
from irr_ray.models.loading import load_model, load_tokenizer
from irr_ray.organism import heldout_eval_prompts


@pytest.fixture(scope="module")
def organism(organism_dir: Path):
    """The organism's instruct model, its held-out prompts and its best single direction (the one
    the build chose: layer and position from ``summary.json``, re-extracted as a difference of means)."""
    torch.set_num_threads(1)
    path = str(Path(organism_dir) / "instruct")
    model, tok = load_model(path, device="cpu"), load_tokenizer(path)
    prompts = heldout_eval_prompts(32)
    chosen = json.loads((Path(organism_dir) / "summary.json").read_text())["behaviour"]["direction"]
    [cand] = mean_difference_candidates(model, encode_batches(tok, prompts["harmful"], 32),
                                        encode_batches(tok, prompts["harmless"], 32), [chosen["layer"]],
                                        [chosen["position"]])
    direction = (cand.vector / cand.vector.norm()).unsqueeze(0)
    return model, tok, [*prompts["harmful"], *prompts["harmless"]], direction


@pytest.mark.parametrize("ablated", [False, True], ids=["plain", "K=1 ablated"])
def test_shrinking_loop_matches_hf_generate(organism, ablated: bool) -> None:
    model, tok, prompts, d = organism
    intervention = None
    if ablated:
        intervention = lambda: ablate_directions(model, d)  # noqa: E731
    old = generate_greedy(model, tok, prompts, max_new_tokens=64, batch_size=32, intervention=intervention,
                          engine="hf-generate")
    new = generate_greedy(model, tok, prompts, max_new_tokens=64, batch_size=32, intervention=intervention,
                          engine="shrinking")
    by_length = generate_greedy(model, tok, prompts, max_new_tokens=64, batch_size=32, intervention=intervention,
                                engine="shrinking", sort_by_length=True)
    assert len(old) == len(prompts) >= 64
    assert new == old
    assert by_length == old
    assert len({len(r.split()) for r in old}) > 1  # rows end at different steps: the drop path ran


def test_short_budget_and_single_row_batches(organism) -> None:
    """max_new_tokens cuts rows mid-reply; batches of one row have no padding at all."""
    model, tok, prompts, _ = organism
    few = prompts[:5] + prompts[-5:]
    for kwargs in ({"max_new_tokens": 3, "batch_size": 4}, {"max_new_tokens": 64, "batch_size": 1}):
        assert generate_greedy(model, tok, few, engine="shrinking", **kwargs) == generate_greedy(
            model, tok, few, engine="hf-generate", **kwargs)


def test_unknown_engine_is_refused(organism) -> None:
    model, tok, prompts, _ = organism
    with pytest.raises(ValueError, match="unknown engine"):
        generate_greedy(model, tok, prompts[:1], engine="vllm")
