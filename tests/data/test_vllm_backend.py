"""vLLM generation backend: request construction and config checks without vllm (the actor runs for
real in ``tests/generation/test_vllm_cpu.py`` and ``tests/data/test_vllm_stage.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from irr_ray.data.config import DataConfig
from irr_ray.errors import IrrRayError
from irr_ray.generation.backends import HFGenerator, generator_udf
from irr_ray.generation.vllm import chat_requests, engine_kwargs, sampling_kwargs


def test_requests_and_params():
    assert chat_requests(["a", "b"]) == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    assert sampling_kwargs(64) == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64}
    kw = engine_kwargs("/models/llama", max_model_len=2048)
    assert kw["model"] == "/models/llama" and kw["trust_remote_code"] is False and kw["max_model_len"] == 2048
    assert "max_model_len" not in engine_kwargs("m")


def test_generator_udf_for_vllm_config_does_not_import_vllm():
    code = (
        "import sys\n"
        "from irr_ray.data.config import DataConfig\n"
        "from irr_ray.generation.backends import generator_udf\n"
        "cfg = DataConfig(generation={'backend': 'vllm', 'num_gpus_per_actor': 1, 'max_new_tokens': 48,"
        " 'vllm': {'gpu_memory_utilization': 0.5}})\n"
        "cls, kw = generator_udf(cfg.generation, 'meta-llama/Llama-3.2-1B-Instruct', 42)\n"
        "assert cls.__name__ == 'VLLMGenerator', cls\n"
        "assert kw['max_new_tokens'] == 48 and kw['engine']['gpu_memory_utilization'] == 0.5\n"
        "assert kw['engine']['seed'] == 42 and kw['engine']['dtype'] == 'auto'\n"
        "assert 'vllm' not in sys.modules and 'ray' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hf_udf_on_cpu_by_default():
    cls, kw = generator_udf(DataConfig().generation, "m", 0)
    assert cls is HFGenerator and kw["device"] == "cpu" and kw["torch_threads"] == 1


def test_pool_plan_fails_fast_or_runs_pools_one_after_the_other():
    """A request the cluster cannot meet would pend forever: it is refused up front. Pools that fit
    only one at a time (one GPU, a vLLM generator and a WildGuard judge) run one after the other."""
    import pytest

    from irr_ray.data.config import GenerationConfig, JudgeConfig
    from irr_ray.data.pipeline import plan_pools
    from irr_ray.errors import ConfigError

    cpu2, gpu1 = {"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}
    assert plan_pools({"generation": GenerationConfig(), "judge": JudgeConfig()}, cpu2) is True
    with pytest.raises(ConfigError, match="generation asks for 1 GPU"):
        plan_pools({"generation": GenerationConfig(backend="vllm", num_gpus_per_actor=1)}, cpu2)
    with pytest.raises(ConfigError, match=r"generation needs 3 x 1 = 3 CPU"):
        plan_pools({"generation": GenerationConfig(num_actors=3)}, cpu2)
    assert plan_pools({"generation": GenerationConfig(num_actors=2), "judge": JudgeConfig()}, cpu2) is False
    vllm = GenerationConfig(backend="vllm", num_gpus_per_actor=1)
    wildguard = JudgeConfig(kind="wildguard", num_gpus_per_actor=1)
    assert plan_pools({"generation": vllm, "judge": wildguard}, gpu1) is False
    assert plan_pools({"generation": vllm, "judge": wildguard}, {"CPU": 8.0, "GPU": 2.0}) is True


def test_vllm_config_gpus_or_cpu():
    """vLLM runs on whole GPUs (CUDA build) or, with 0 GPUs per actor, on its CPU build (vllm-cpu)."""
    import pytest
    from pydantic import ValidationError

    from irr_ray.data.config import GenerationConfig, JudgeConfig

    cpu = GenerationConfig(backend="vllm")  # 0 GPUs: vllm-cpu
    cls, kw = generator_udf(cpu, "/models/organism", 7)
    assert kw["engine"]["device"] == "cpu" and kw["engine"]["dtype"] == "float32"
    assert kw["engine"]["gpu_memory_utilization"] == 0.1 and kw["engine"]["enforce_eager"] is True
    gpu = GenerationConfig(backend="vllm", num_gpus_per_actor=1)
    assert "device" not in generator_udf(gpu, "m", 0)[1]["engine"]
    with pytest.raises(ValidationError, match="whole GPUs"):
        GenerationConfig(backend="vllm", num_gpus_per_actor=0.5)
    with pytest.raises(ValidationError, match="tensor_parallel_size=2"):
        GenerationConfig(backend="vllm", num_gpus_per_actor=1, vllm={"tensor_parallel_size": 2})
    with pytest.raises(ValidationError, match="needs GPUs"):
        GenerationConfig(backend="vllm", vllm={"tensor_parallel_size": 2})
    assert GenerationConfig(backend="vllm", num_gpus_per_actor=2, vllm={"tensor_parallel_size": 2})
    # the package's own WildGuard-7B needs GPUs; a WildGuard-format model on vLLM runs on CPU too
    with pytest.raises(ValidationError, match="engine=wildguard"):
        JudgeConfig(kind="wildguard")
    assert JudgeConfig(kind="wildguard", engine="vllm", model="/models/judge").num_gpus_per_actor == 0


def test_judge_engine_and_spec_for_a_local_wildguard_format_model(tmp_path):
    from irr_ray.data.config import JudgeConfig
    from irr_ray.judges.base import judge_engine, judge_spec

    (tmp_path / "config.json").write_text("{}")
    cfg = JudgeConfig(kind="wildguard", engine="vllm", model=str(tmp_path), max_new_tokens=32)
    spec = judge_spec(cfg, None)
    assert spec["model"] == str(tmp_path.resolve()) and len(spec["model_hash"]) == 64
    assert spec["max_new_tokens"] == 32 and spec["dtype"] == "auto"
    engine = judge_engine(cfg)
    assert engine["device"] == "cpu" and engine["trust_remote_code"] is False
    (tmp_path / "config.json").write_text('{"changed": 1}')  # a rebuilt judge is another judge
    assert judge_spec(cfg, None)["model_hash"] != spec["model_hash"]
    assert judge_engine(JudgeConfig()) is None
    missing = tmp_path / "no-judge-here"
    with pytest.raises(IrrRayError, match=f"judge.model {missing}: no such") as err:
        judge_spec(JudgeConfig(kind="wildguard", engine="vllm", model=str(missing)), None)
    assert "\n" not in str(err.value)
