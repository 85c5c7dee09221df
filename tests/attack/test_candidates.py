"""The attack's conventions: which layers candidates come from (both rules, written out by hand),
the KL filter's baseline (both conventions agree at K = 1 and differ after), and bad values of
either knob failing as a one-line config error that names the key."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from irr_ray.attack.candidates import candidate_layers, encode_batches, mean_difference_candidates
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.scoring import ReferenceScorer, make_scorer
from irr_ray.bench.attack import organism_prompts
from irr_ray.cli import main
from irr_ray.core.directions import orthonormalize
from irr_ray.errors import ConfigError
from irr_ray.organism.tokenizer import build_tokenizer
from irr_ray.study_config import load_section

# Residual-stream indices (x_l = input of block l; 0 = embeddings) with prune fraction 0.2, written
# out from the rules, not recomputed: method = block outputs b < int(0.8·L), i.e. 1 … int(0.8·L);
# arditi = block inputs 0 … int(0.8·L) − 1 (Arditi et al.'s filter_fn: drop layer >= int(0.8·L)).
METHOD = {
    4: [1, 2, 3],
    5: [1, 2, 3, 4],
    10: [1, 2, 3, 4, 5, 6, 7, 8],
    16: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    28: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22],
    32: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25],
}
ARDITI = {
    4: [0, 1, 2],
    5: [0, 1, 2, 3],
    10: [0, 1, 2, 3, 4, 5, 6, 7],
    16: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    28: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
    32: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24],
}


@pytest.mark.parametrize("num_layers", sorted(METHOD))
def test_candidate_layers_follow_the_written_rules(num_layers: int) -> None:
    assert candidate_layers(num_layers, 0.2, "method") == METHOD[num_layers]
    assert candidate_layers(num_layers, 0.2, "arditi") == ARDITI[num_layers]
    assert AttackConfig().candidate_layer_indices(num_layers) == METHOD[num_layers]  # the default
    arditi = AttackConfig(candidate_layers="arditi")
    assert arditi.candidate_layer_indices(num_layers) == ARDITI[num_layers]


def test_candidate_layers_edges() -> None:
    # prune 0: the method would reach the last block's output (index L); directions are added back at
    # a block input, so it stops at L − 1. Arditi et al. keep every block input.
    assert candidate_layers(4, 0.0, "method") == [1, 2, 3]
    assert candidate_layers(4, 0.0, "arditi") == [0, 1, 2, 3]
    assert candidate_layers(10, 0.5, "method") == [1, 2, 3, 4, 5]
    assert candidate_layers(10, 0.5, "arditi") == [0, 1, 2, 3, 4]
    # nothing left by the rule (tiny L): the rule's lowest layer
    assert candidate_layers(1, 0.2, "method") == [0]
    assert candidate_layers(2, 0.6, "method") == [1]
    assert candidate_layers(1, 0.2, "arditi") == [0]
    with pytest.raises(ValueError, match="unknown rule"):
        candidate_layers(4, 0.2, "last")  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "value"), [("kl_baseline", "unattacked"), ("candidate_layers", "all")])
def test_unknown_convention_is_a_one_line_config_error_naming_the_key(
        key: str, value: str, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match=f"`{key}`"):
        load_section(None, "attack", AttackConfig, overrides=[f"{key}={value}"])
    rc = main(["attack", "--model", str(tmp_path / "m"), "--data-dir", str(tmp_path / "d"),
               "--out", str(tmp_path / "o"), "--set", f"{key}={value}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"`{key}`" in err and "\n" not in err, err


def _tiny_llama():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def test_kl_baselines_agree_at_k1_and_differ_after() -> None:
    """K = 1: nothing is ablated yet, so 'previous' and 'original' are the same baseline and every
    score is identical (reference and fast). K = 2: 'previous' measures only what the candidate adds."""
    torch.set_num_threads(1)
    model, tokenizer = _tiny_llama()
    ids = [tokenizer.convert_tokens_to_ids("I")]
    extract, score = organism_prompts(16, 6)
    harmful, harmless = encode_batches(tokenizer, extract.harmful, 16), encode_batches(tokenizer, extract.harmless, 16)
    candidates = mean_difference_candidates(model, harmful, harmless, [1, 2], [-2, -1])
    scorers = {}
    for baseline in ("previous", "original"):
        cfg = AttackConfig(extract_n=16, score_n=6, score_all=True, kl_baseline=baseline)
        scorers[baseline] = (ReferenceScorer(model, tokenizer, score, ids, cfg), make_scorer(model, tokenizer, score, ids, cfg))
    k1 = {(b, i): s.score(candidates, []) for b, pair in scorers.items() for i, s in enumerate(pair)}
    for i in (0, 1):
        assert k1[("previous", i)] == k1[("original", i)]  # identical, not just close

    chosen = [candidates[0].vector]
    q = orthonormalize(torch.stack(chosen))
    again = mean_difference_candidates(model, harmful, harmless, [1, 2], [-2, -1], q)
    k2 = {(b, i): s.score(again, chosen) for b, pair in scorers.items() for i, s in enumerate(pair)}
    for b in ("previous", "original"):
        for r, f in zip(k2[(b, 0)], k2[(b, 1)], strict=True):
            assert f.kl == pytest.approx(r.kl, abs=1e-6)
    prev, orig = k2[("previous", 0)], k2[("original", 0)]
    assert all(p.refusal_score == o.refusal_score and p.induce_score == o.induce_score for p, o in zip(prev, orig, strict=True))
    assert max(abs(p.kl - o.kl) for p, o in zip(prev, orig, strict=True)) > 1e-6
