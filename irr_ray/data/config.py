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
    """Arguments of ``vllm.LLM(...)`` for the vLLM generation backend (GPU only)."""

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine shards the model over")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="fraction of GPU memory vLLM may take")
    max_model_len: int | None = Field(None, ge=1, description="context length cap (None: the model's)")
    enforce_eager: bool = Field(False, description="disable CUDA graphs (slower, less memory)")


class GenerationConfig(StrictModel):
    """How the source model answers each prompt: greedy decoding with its chat template."""

    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate (CPU/GPU); vllm: GPU")
    batch_size: int = Field(32, ge=1, description="prompts per generate call (and per Ray Data batch)")
    max_new_tokens: int = Field(64, ge=1, description="greedy tokens per response")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bf16 on GPU (vllm: the model's dtype), fp32 on CPU")
    num_actors: int = Field(1, ge=1, description="generation actors (one model each); one per GPU on vllm")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="0 = CPU; vllm needs >= 1")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per generation actor")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per hf actor (None: CPUs per actor)")
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig)

    @model_validator(mode="after")
    def _vllm_needs_gpu(self) -> GenerationConfig:
        if self.backend == "vllm" and self.num_gpus_per_actor < 1:
            raise ValueError("generation.backend=vllm runs on GPUs: set generation.num_gpus_per_actor=1 "
                             "(or use backend=hf on CPU)")
        if self.backend == "vllm" and self.vllm.tensor_parallel_size > self.num_gpus_per_actor:
            raise ValueError(f"generation.vllm.tensor_parallel_size={self.vllm.tensor_parallel_size} shards the "
                             f"model over that many GPUs: set generation.num_gpus_per_actor to at least that")
        return self


class JudgeSettings(StrictModel):
    """Who decides whether a response is a refusal: the fields that change the verdicts, read by
    :func:`irr_ray.judges.base.judge_spec` (shared by every stage that judges; no resource knobs)."""

    kind: Literal["substring", "wildguard"] = Field(
        "substring", description="substring: refusal phrases (CPU); wildguard: WildGuard-7B on vLLM (GPU)")
    phrases: list[str] | None = Field(None, description="substring: replaces the default phrase list")
    extra_phrases: list[str] | Literal["auto"] = Field(
        "auto", description="substring: added phrases; auto = the responding model's `irr_ray_judge_phrases` "
                            "(the data stage: the source model)")
    engine: Literal["wildguard", "vllm"] = Field(
        "wildguard",
        description="wildguard: the wildguard package's classifier; vllm: WildGuard's documented prompt "
                    "format + parser on a vllm.LLM loaded from `model` (a mirror or local copy)")
    model: str = Field("allenai/wildguard", description="engine=vllm: WildGuard model id or directory")
    max_new_tokens: int = Field(128, ge=1, description="engine=vllm: classifier output tokens (WildGuard: 128)")
    batch_size: int = Field(64, ge=1, description="rows per judge call (and per Ray Data batch)")


class JudgeConfig(JudgeSettings):
    """The data stage's judge: :class:`JudgeSettings` plus its Ray Data actor pool."""

    num_actors: int = Field(1, ge=1, description="judge actors (one classifier each)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="0 = CPU; wildguard needs >= 1")
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per judge actor")

    @model_validator(mode="after")
    def _wildguard_needs_gpu(self) -> JudgeConfig:
        if self.kind == "wildguard" and self.num_gpus_per_actor < 1:
            raise ValueError("judge.kind=wildguard runs WildGuard-7B on vLLM: set judge.num_gpus_per_actor=1 "
                             "(or use judge.kind=substring on CPU)")
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
