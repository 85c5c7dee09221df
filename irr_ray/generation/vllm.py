"""vLLM generation backend (GPU only): one ``vllm.LLM`` per Ray actor, greedy ``llm.chat``.

``vllm`` is imported inside :class:`VLLMGenerator.__init__`, never at module import, so CPU code
paths (and the tests) can import this module. ``llm.chat`` applies the model's own chat template
with the generation prompt, like :func:`irr_ray.models.chat.format_chat` does for the hf backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


def chat_requests(prompts: Sequence[str]) -> list[list[dict[str, str]]]:
    """One single-user-turn conversation per prompt (the method's input: the prompt only)."""
    return [[{"role": "user", "content": p}] for p in prompts]


def sampling_kwargs(max_new_tokens: int) -> dict[str, Any]:
    """Greedy decoding: ``SamplingParams(temperature=0, top_p=1, max_tokens=N)``."""
    return {"temperature": 0.0, "top_p": 1.0, "max_tokens": int(max_new_tokens)}


def engine_kwargs(model: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                  gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                  enforce_eager: bool = False, seed: int = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``; remote code stays off."""
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "tensor_parallel_size": int(tensor_parallel_size),
        "gpu_memory_utilization": float(gpu_memory_utilization),
        "enforce_eager": bool(enforce_eager),
        "seed": int(seed),
        "trust_remote_code": False,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    return kwargs


class VLLMGenerator:
    """Ray Data class UDF: adds ``response`` (greedy, stripped) to a pandas batch holding ``prompt``."""

    def __init__(self, engine: dict[str, Any], max_new_tokens: int) -> None:
        from vllm import LLM, SamplingParams  # CUDA build; only ever imported on GPU actors

        self.llm = LLM(**engine)
        self.params = SamplingParams(**sampling_kwargs(max_new_tokens))

    def generate(self, prompts: Sequence[str]) -> list[str]:
        outputs = self.llm.chat(chat_requests(prompts), self.params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["response"] = self.generate(batch["prompt"].tolist())
        return out
