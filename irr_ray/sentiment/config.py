"""Typed config of the sentiment proof of concept (``experiments/sentiment.yaml``).

One tree: ``data`` (local templated set or IMDB), ``model`` (a small GPT-2 trained here, or a hub
model such as ``gpt2``), ``train`` (the matching fine-tune), ``eval`` (perplexity, gap, probes,
LEACE / INLP), ``sweep`` (the λ grid on Ray Tune), ``tracking`` (MLflow). Every threshold and seed
lives here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from irr_ray.config import StrictModel
from irr_ray.train.config import (
    RaySettings,
    ReadoutConfig,
    ResourcesConfig,
    TrackingSettings,
    TrainConfig,
    TrainEvalConfig,
)


class SentimentDataConfig(StrictModel):
    """Where the reviews come from and how the local set is drawn (see :mod:`irr_ray.sentiment.data`)."""

    source: Literal["local", "imdb"] = Field("local", description="local templated set, or IMDB via datasets")
    seed: int = Field(0, description="seed of the local generator, the split and IMDB subsampling")
    n_reviews: int = Field(3000, ge=20, description="local: number of reviews (half positive)")
    holdout_fraction: float = Field(0.4, gt=0.0, lt=1.0, description="local: stratified held-out fraction")
    aspect_sentences: list[int] = Field([3, 5], description="local: odd counts of aspect sentences per review")
    neutral_sentences: tuple[int, int] = Field((0, 1), description="local: min/max neutral sentences")
    agree_prob: float = Field(0.9, gt=0.5, le=1.0, description="local: P(sentence polarity = label)")
    negation_prob: float = Field(0.15, ge=0.0, le=1.0, description="local: P(a sentence is negated)")
    verdict_prob: float = Field(0.9, ge=0.0, le=1.0, description="local: P(a closing verdict sentence)")
    imdb_name: str = Field("imdb", description="imdb: dataset id for datasets.load_dataset")
    imdb_max_train: int | None = Field(8000, description="imdb: stratified cap on train reviews (None = all)")
    imdb_max_holdout: int | None = Field(2000, description="imdb: stratified cap on test reviews (None = all)")

    @model_validator(mode="after")
    def _check(self) -> SentimentDataConfig:
        if not self.aspect_sentences or any(k < 1 or k % 2 == 0 for k in self.aspect_sentences):
            raise ValueError(f"data.aspect_sentences {self.aspect_sentences}: need odd counts >= 1 (a majority)")
        lo, hi = self.neutral_sentences
        if lo < 0 or hi < lo:
            raise ValueError(f"data.neutral_sentences {self.neutral_sentences}: need 0 <= min <= max")
        return self


class SentimentModelConfig(StrictModel):
    """The model the conditions are fine-tuned from.

    ``source: local`` builds a GPT-2-architecture LM from scratch on the local train split (a
    WordLevel tokenizer over its vocabulary, then plain language modelling); any other value is a
    Hugging Face id or directory (``gpt2`` on the cluster) used as is.
    """

    source: str = Field("local", description="'local' (built here) or an HF model id/path, e.g. gpt2")
    seed: int = Field(0, description="seed of the local model's init and data order")
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=8)
    n_head: int = Field(4, ge=1)
    n_positions: int = Field(128, ge=16, description="local: context length (reviews are ~40-90 tokens)")
    epochs: int = Field(4, ge=1, description="local: LM pre-training epochs")
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    batch_size: int = Field(32, ge=1)
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> SentimentModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        return self


class SentimentEvalConfig(StrictModel):
    """The table's measurements. Features are hidden states at ``layer`` mean-pooled over real tokens."""

    layer: int | None = Field(None, description="hidden_states index (0 = embeddings); None = int(0.65*L)")
    device: str | None = Field(None, description="cuda, cpu or None (CUDA when available); sweep tasks use "
                                                 "sweep.eval_gpus")
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=8, description="tokens per review (IMDB reviews are truncated)")
    probe_seed: int = Field(0)
    max_probe_train: int | None = Field(None, description="cap on train reviews the probes/erasers fit on")
    max_probe_holdout: int | None = Field(None, description="cap on held-out reviews scored")
    mlp_hidden_sizes: list[int] = Field([64], description="MLP probe hidden layer sizes")
    mlp_max_iter: int = Field(200, ge=1, description="MLP probe epochs (Adam)")
    erasure_mlp: bool = Field(True, description="also fit the MLP probe on LEACE / INLP-erased features")
    inlp_iterations: int = Field(10, ge=1, description="INLP rounds (directions removed)")


DEFAULT_CONDITIONS: dict[str, dict[str, Any]] = {
    # The method's sentiment runs (seed text): LM fine-tune, multi-layer matching, sentence pool.
    "baseline": {"match": "none"},
    "mean_l2": {"match": "mean", "mean_penalty": "l2", "lambda_mean": 100.0, "multi_layer": True},
    "mean_l1": {"match": "mean", "mean_penalty": "l1", "lambda_mean": 100.0, "multi_layer": True},
    "cov_l2": {"match": "cov", "cov_penalty": "l2", "lambda_cov": 100.0, "multi_layer": True},
}


def _local_train() -> TrainConfig:
    """Fine-tune settings scaled to the local model (the paper's GPT-2 values go in the YAML)."""
    return TrainConfig(
        lr=2e-3, weight_decay=0.01, epochs=4, micro_batch=16, grad_accum=1, warmup_ratio=0.05, seed=0,
        max_length=128, readout=ReadoutConfig(last_ratio=0.3333, random_ratio=0.3333, chat_ratio=0.0),
        eval=TrainEvalConfig(n_per_class=64, batch_size=64, attack_k=0),
    )


class SentimentSweepConfig(StrictModel):
    """The λ grid: one Tune trial per λ of the ``matching`` condition, plus the baseline."""

    matching: str = Field("mean_l2", description="condition whose λ the grid varies")
    lambdas: list[float] = Field([10.0, 50.0, 100.0, 500.0], description="grid of λ_mean (or λ_cov)")
    include_baseline: bool = Field(True, description="train the baseline as a trial of the same sweep")
    max_concurrent_trials: int = Field(2, ge=1)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_failures: int = Field(1, ge=0, description="restarts of a failed trial (from its last epoch)")
    eval_cpus: float = Field(1.0, gt=0.0, description="CPUs per evaluation task after the sweep")
    eval_gpus: float = Field(0.0, ge=0.0, description="GPUs per evaluation task after the sweep")

    @model_validator(mode="after")
    def _check(self) -> SentimentSweepConfig:
        if not self.lambdas or any(v < 0 for v in self.lambdas):
            raise ValueError(f"sweep.lambdas {self.lambdas}: need a non-empty list of values >= 0")
        return self


class SentimentStudy(StrictModel):
    """A sentiment study: everything under ``study_dir`` (see :mod:`irr_ray.sentiment.study`)."""

    name: str = Field("sentiment", description="study name: MLflow experiment and Tune run name")
    threads: int = Field(1, ge=1, description="torch CPU threads of in-process build / train / eval (more "
                                              "threads than free cores slows small models down badly)")
    study_dir: str | None = Field(None, description="output directory (relative to the working directory)")
    data: SentimentDataConfig = Field(default_factory=SentimentDataConfig)
    model: SentimentModelConfig = Field(default_factory=SentimentModelConfig)
    train: TrainConfig = Field(default_factory=_local_train, description="base fine-tune (irr_ray.train)")
    conditions: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(DEFAULT_CONDITIONS), description="named partial train configs")
    run_conditions: list[str] = Field(["baseline", "mean_l2"], description="what `train` / `eval` do by default")
    baseline: str = Field("baseline", description="condition whose frozen features get LEACE / INLP")
    eval: SentimentEvalConfig = Field(default_factory=SentimentEvalConfig)
    sweep: SentimentSweepConfig = Field(default_factory=SentimentSweepConfig)
    ray: RaySettings = Field(default_factory=RaySettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)

    @model_validator(mode="after")
    def _check(self) -> SentimentStudy:
        for name in [*self.run_conditions, self.baseline, self.sweep.matching]:
            if name not in self.conditions:
                raise ValueError(f"condition {name!r} is not defined under `conditions` "
                                  f"(defined: {', '.join(sorted(self.conditions))})")
        if self.conditions[self.sweep.matching].get("match", "none") == "none":
            raise ValueError(f"sweep.matching={self.sweep.matching!r} has match none: λ would do nothing")
        return self
