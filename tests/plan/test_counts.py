"""The planner's counted FLOPs against the FLOPs of forwards actually run on the organism's shape.

Only shapes matter here, so the model is a random-init Llama with the organism's default build
config (6 blocks, hidden 128, FFN 512, 4 heads, its word-level tokenizer's vocabulary), not the
built organism (≈ 6 min to build): the count of a forward does not depend on the weights. Prompts
are organism rows of one chat-formatted length, so the planner's uniform-length assumption holds
exactly. Ground truth: ``torch.utils.flop_counter.FlopCounterMode`` around the production code
(extraction, reference scoring, HF generation, a training step). The model uses eager attention:
FlopCounterMode counts its QKᵀ and AV matmuls, while the CPU SDPA kernel it has no formula for
(measured with sdpa: every count 2.05% low, exactly the attention term 4·T·H·d / 2·W_block).

Tolerance: 1% relative. Measured gaps (planned / counted − 1): extraction, generation and the
training step 0 exactly; reference scoring −0.18% — the ablation hooks' projections (x·Qᵀ at 3
sites per block), which the planner leaves out. ``-s`` prints them.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.prompts import PromptPair
from irr_ray.attack.scoring.reference import ReferenceScorer
from irr_ray.bench.attack import split_flops
from irr_ray.plan.flops import (
    TokenAssumptions,
    asha_expected_epochs,
    attack_iteration_flops,
    decode_flops,
    generation_flops,
    training_step_flops,
)
from irr_ray.plan.shapes import ModelShape

TOLERANCE = 0.01


@pytest.fixture(scope="module")
def organism_shaped():
    """(random Llama of the organism's shape, its tokenizer, ModelShape, harmful, harmless, P)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from irr_ray.organism.config import OrganismConfig
    from irr_ray.organism.dataset import make_rows
    from irr_ray.organism.tokenizer import build_tokenizer

    torch.set_num_threads(1)
    tok = build_tokenizer()
    m = OrganismConfig().model
    config = LlamaConfig(vocab_size=len(tok), hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                         num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                         num_key_value_heads=m.num_heads, max_position_embeddings=m.max_position_embeddings,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    shape = ModelShape.from_config("organism-shaped", config.to_dict())
    rows = [r for r in make_rows(1500, 0.0, 0.0, 0.5, 0) if r["prompt_harm_label"] in ("harmful", "unharmful")]
    length = {r["prompt"]: int(encode_batches(tok, [r["prompt"]], 1)[0]["attention_mask"].sum()) for r in rows}
    p = Counter(length.values()).most_common(1)[0][0]
    by_class: dict[str, list[str]] = {"harmful": [], "unharmful": []}
    for r in rows:
        if length[r["prompt"]] == p and r["prompt"] not in by_class[r["prompt_harm_label"]]:
            by_class[r["prompt_harm_label"]].append(r["prompt"])
    return model, tok, shape, by_class["harmful"], by_class["unharmful"], p


def counted(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def close(planned: float, measured: float) -> bool:
    print(f"planned {planned:.6g} measured {measured:.6g} gap {planned / measured - 1:+.4%}")
    return abs(planned / measured - 1) <= TOLERANCE


def settings() -> AttackConfig:
    cfg = AttackConfig(extract_n=8, score_n=4, eval_n=4, extract_batch_size=4, implementation="reference")
    cfg.generation.max_new_tokens = 6
    return cfg


def test_attack_iteration_equals_the_forwards_run(organism_shaped) -> None:
    model, tok, shape, harmful, harmless, p = organism_shaped
    cfg = settings()
    assert len(harmful) >= cfg.extract_n + cfg.score_n and len(harmless) >= cfg.extract_n + cfg.score_n
    plan = attack_iteration_flops(cfg, shape, None, TokenAssumptions(p))
    layers = cfg.candidate_layer_indices(shape.num_hidden_layers)
    hb = encode_batches(tok, harmful[:cfg.extract_n], cfg.extract_batch_size)
    ub = encode_batches(tok, harmless[:cfg.extract_n], cfg.extract_batch_size)
    holder: dict = {}

    def extract() -> None:
        holder["candidates"] = mean_difference_candidates(model, hb, ub, layers, cfg.positions, None)

    assert close(plan["extract"], counted(extract))
    assert len(holder["candidates"]) == plan["candidates"]
    score = PromptPair(harmful[cfg.extract_n:cfg.extract_n + cfg.score_n],
                       harmless[cfg.extract_n:cfg.extract_n + cfg.score_n])
    scorer = ReferenceScorer(model, tok, score, [tok.convert_tokens_to_ids("i")], cfg)
    assert close(plan["score"], counted(lambda: scorer.score(holder["candidates"], [])))


def test_generation_equals_hf_generate(organism_shaped) -> None:
    model, tok, shape, harmful, _, p = organism_shaped
    rows, new = 4, 6
    batch = encode_batches(tok, harmful[:rows], rows)[0]
    prefill, decode = generation_flops(shape, rows, p, new)

    def generate() -> None:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                           pad_token_id=tok.pad_token_id)

    assert close(prefill + decode, counted(generate))
    assert decode_flops(shape, rows, p, 1) == 0.0


def test_training_step_equals_forward_and_backward(organism_shaped) -> None:
    model, tok, shape, harmful, harmless, p = organism_shaped
    batch = encode_batches(tok, [*harmful[:4], *harmless[:4]], 8)[0]

    def step() -> None:
        model.train()
        out = model(**batch, labels=batch["input_ids"])
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    assert close(training_step_flops(shape, 8, p), counted(step))


def test_planner_agrees_with_split_flops(organism_shaped) -> None:
    """At uniform prompt lengths the planner's iteration is ``split_flops``' (the benchmark's count)."""
    _, _, shape, harmful, harmless, p = organism_shaped
    cfg = settings()
    extract = PromptPair(harmful[:cfg.extract_n], harmless[:cfg.extract_n])
    score = PromptPair(harmful[8:12], harmless[8:12])
    evaluate = PromptPair(harmful[12:16], harmless[12:16])
    shape_dict = {k: getattr(shape, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads", "head_dim",
                                                  "vocab_size", "tie_word_embeddings")}
    bench = split_flops(shape_dict, cfg, extract, score, evaluate, cfg.generation.max_new_tokens)
    plan = attack_iteration_flops(cfg, shape, None, TokenAssumptions(p))
    assert plan["extract"] == pytest.approx(bench["extract"], rel=1e-12)
    assert plan["score"] == pytest.approx(bench["score_reference"], rel=1e-12)
    assert plan["eval_prefill"] + plan["eval_decode"] == pytest.approx(bench["eval"], rel=1e-12)


def test_asha_expected_epochs() -> None:
    assert asha_expected_epochs(20, 4, 2) == pytest.approx(4 + 4 / 2 + 8 / 4 + 4 / 8)
    assert asha_expected_epochs(4, 1, 2) == pytest.approx(1 + 1 / 2 + 2 / 4)
    assert asha_expected_epochs(3, 4, 2) == 3


def test_known_shapes() -> None:
    """The table's shapes give the models' published sizes (Llama-3.2-1B: 1.24B; WildGuard-7B: the
    7.24e9 the attack benchmark uses)."""
    from irr_ray.bench.attack import WILDGUARD_PARAMS
    from irr_ray.errors import ConfigError
    from irr_ray.plan.shapes import KNOWN_SHAPES, known_shape

    assert KNOWN_SHAPES["meta-llama/Llama-3.2-1B-Instruct"].params == pytest.approx(1.236e9, rel=1e-3)
    assert KNOWN_SHAPES["allenai/wildguard"].params == pytest.approx(WILDGUARD_PARAMS, rel=2e-3)
    with pytest.raises(ConfigError, match="someone/some-model"):
        known_shape("someone/some-model")
