"""The GPU variant of ``irr-ray bench attack`` (Llama-3.2-1B shape, bf16 on CUDA) runs end to end;
here on CPU at a tiny shape, which is all this machine can check without a GPU."""

from __future__ import annotations

import torch

from irr_ray.bench.attack import bench, forward_flops, gpu_report, gpu_setup


def test_gpu_bench_variant_runs_on_cpu_at_tiny_size() -> None:
    torch.set_num_threads(1)
    result = gpu_report(bench(gpu_setup("cpu", quick=True)), "cpu", quick=True)
    assert result["identical_choices"] and result["max_chosen_score_err"] < 1e-4
    assert result["fast_tflops_per_s"] > 0 and 0 < result["fraction_of_matmul_rate"] < 10
    assert result["iterations"][0]["candidates"] > 0


def test_forward_flops_counts_the_llama_1b_forward() -> None:
    """One token through Llama-3.2-1B: 2 FLOPs per weight of the 16 blocks (973.1M weights without
    norms) plus the tied LM head (262.7M), and attention's QKᵀ/AV over a 1-token context."""
    from transformers import LlamaConfig

    from irr_ray.bench.attack import LLAMA_1B

    config = LlamaConfig(**LLAMA_1B)
    blocks = 16 * (2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 8192)
    head = 2048 * 128256
    assert forward_flops(config, 1, 1, 16, 1) == 2 * blocks + 2 * head + 16 * 4 * 2048


def test_exact_flop_bound_caps_the_fast_scorer() -> None:
    """Every exact scorer runs the refusal pass over all candidates, so the fast scorer's FLOP ratio
    can't exceed ``exact_flop_bound``; for Llama-3.2-1B's full shape that bound is below 10×, which is
    why the 10× target needs a GPU's batching (README, attack speed)."""
    from irr_ray.attack.config import AttackConfig
    from irr_ray.bench.attack import LLAMA_1B, analytic_bound, organism_prompts

    torch.set_num_threads(1)
    result = bench(gpu_setup("cpu", quick=True))
    assert 1.0 < result["scoring_flop_ratio"] <= result["exact_flop_bound"] + 1e-9
    cfg = AttackConfig()
    _, score = organism_prompts(cfg.extract_n, cfg.score_n)
    bound = analytic_bound(LLAMA_1B, score, cfg.extract_batch_size, 13 * 5)
    assert 2.0 < bound < 10.0
