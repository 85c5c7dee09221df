"""Typed configs of the training stage: one fine-tune (:class:`TrainConfig`) and the Tune sweep
over many of them (:class:`SweepConfig`).

Defaults are the method's paper configuration (Llama-3.2-1B-Instruct: lr 2e-5, weight decay 0.01,
effective batch 128, 20 epochs, bf16 on GPU, multi-layer matching) with one deliberate change:
the method's micro-batch of 2 leaves the covariance term identically zero (an unbiased class
covariance needs two samples of the class), so irr-ray draws **class-balanced micro-batches** and
matches statistics per micro-batch, with the same effective batch: 8 (4 harmful + 4 harmless)
× 16 accumulation steps = 128. ``micro_batch`` must be even, ≥ 2 for mean matching and ≥ 4 for
covariance matching; every micro-batch then defines both penalties (0 degenerate steps).

``batching: shuffled`` is the method's own convention, kept as a named option so its effect can be
measured: one seeded permutation of all training rows per epoch, cut into consecutive micro-batches
of ``micro_batch`` (any size ≥ 1, last one possibly shorter). The even / ≥ 4-for-cov checks do not
apply; a micro-batch that defines no class statistic is counted in ``degenerate_steps`` (with
micro-batch 2 and covariance matching: every one of them, so the matching term is identically zero).

The organism's scaled-down values live in ``experiments/organism.yaml`` (``train:`` / ``sweep:``).
A trial's config is a typed :class:`TrainConfig` with its sampled knobs applied by
:meth:`TrainConfig.with_knobs` (validated, no dict round trip).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from irr_ray.config import StrictModel, build_config

# What a fine-tune matches: nothing, or one class statistic (irr_ray.core.losses.MatchKind).
Matching = Literal["none", "mean", "cov"]
# The penalty's norm: the same values as irr_ray.core.losses.PenaltyKind (not imported: no torch here).
PenaltyKind = Literal["l1", "l2"]
# How training rows become micro-batches (irr_ray.train.data.epoch_batches): class-balanced (the
# platform's) or one shuffled stream of both classes (the method's code).
Batching = Literal["balanced", "shuffled"]
# Refusal-direction ablation during training (irr_ray.train.defenses): none, ReFAT (every layer and
# position of a chosen harmful example) or DeepRefusal-style random layers and positions.
Ablation = Literal["none", "refat", "random"]


class ReadoutConfig(StrictModel):
    """Per-sample mixed pooling of a prompt's hidden states (:func:`irr_ray.core.readouts.mixed_readout`).

    Each sample reads its last token with probability ``last_ratio``, a random ``random_fraction``
    of its tokens with ``random_ratio``, the chat-template positions ``chat_offsets`` with
    ``chat_ratio``, and the mean of all its tokens otherwise. The paper: sentence pool
    (1/3, 1/3, 0) without KD, chat-template pool (0, 0, 1) with KD.
    """

    last_ratio: float = Field(0.3333, ge=0.0, le=1.0, description="P(last prompt token)")
    random_ratio: float = Field(0.3333, ge=0.0, le=1.0, description="P(random token subset)")
    chat_ratio: float = Field(0.0, ge=0.0, le=1.0, description="P(chat-template positions)")
    random_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of tokens in a random subset")
    chat_offsets: list[int] = Field(default_factory=lambda: [-5, -4, -3, -2, -1],
                                    description="positions from the end read by the chat pool")

    @model_validator(mode="after")
    def _ratios(self) -> ReadoutConfig:
        total = self.last_ratio + self.random_ratio + self.chat_ratio
        if total > 1.0 + 1e-6:
            raise ValueError(f"last_ratio + random_ratio + chat_ratio must be <= 1, got {total:.4f}")
        if not self.chat_offsets or any(o >= 0 for o in self.chat_offsets):
            raise ValueError("chat_offsets must be negative positions (-1 = last prompt token)")
        return self


class TrainEvalConfig(StrictModel):
    """Per-epoch evaluation on a fixed validation slice and the sweep objective (see
    :mod:`irr_ray.train.objective` for the formula)."""

    n_per_class: int = Field(64, ge=4, description="validation prompts per class, held out of train.parquet")
    batch_size: int = Field(64, ge=1, description="rows per evaluation forward")
    probe_layer_frac: float = Field(0.65, gt=0.0, le=1.0, description="probe at hidden_states[int(frac*L)]")
    attack_k: int = Field(3, ge=0, le=8, description="directions ablated by the in-training attack proxy")
    attack_candidates: int = Field(4, ge=1, description="difference-of-means candidates scored per step")
    attack_prompts: int = Field(16, ge=2, description="harmful validation prompts the proxy scores")
    attack_prune_frac: float = Field(0.2, ge=0.0, lt=1.0, description="candidates at the attack's method layers: residual indices 1 … int((1-frac)*L)")
    attack_offsets: list[int] = Field(default_factory=lambda: [-5, -4, -3, -2, -1],
                                      description="candidate positions from the end")
    k0_weight: float = Field(2.0, ge=0.0, description="alpha: weight of lost K=0 behaviour in the objective")
    reply_tokens: int = Field(
        16, ge=0, description="greedy reply tokens of the source model scored for the objective's reply drift "
                              "(0 or 1 = off)")
    refusal_tokens: list[str] | None = Field(
        None, description="first-token refusal strings; default: config.irr_ray_refusal_tokens or the family's")


class TrainConfig(StrictModel):
    """One fine-tune: LM loss on prompt-only chat inputs + λ·matching + kd_lambda·KD + refat_lambda·refusal
    under ablation.

    ``loss = LM(prompt tokens) + λ_mean·P_mean [match=mean] + λ_cov·P_cov [match=cov]
    + kd_lambda · KD + refat_lambda · KD(ablated copies of harmful rows) [ablation ≠ none]``, with
    ``KD = T²·KL(teacher ‖ student)`` at the last prompt position, plus the mean over the teacher's
    greedy reply positions when ``kd_reply_tokens ≥ 2`` (:mod:`irr_ray.train.replies`). The
    ablation defenses (``refat``: Yu et al., ICLR 2025; ``random``: Xie et al., EMNLP Findings 2025)
    are described in :mod:`irr_ray.train.defenses`.
    """

    model: str | None = Field(None, description="source model directory (the KD teacher is its frozen copy)")
    lr: float = Field(2e-5, gt=0.0, description="AdamW learning rate (paper: 2e-5)")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (paper: 0.01)")
    epochs: int = Field(20, ge=0, description="passes over the training set (0 = export the source model)")
    micro_batch: int = Field(8, ge=1, description="micro-batch; balanced batching: even, half harmful")
    batching: Batching = Field(
        "balanced", description="balanced: micro_batch/2 of each class (statistics always defined) | shuffled: "
                                "the method's one shuffled stream of both classes (degenerate steps counted)")
    grad_accum: int = Field(16, ge=1, description="micro-batches per optimizer step (8 x 16 = paper's 128)")
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0, description="linear warm-up share of all steps")
    max_grad_norm: float = Field(1.0, gt=0.0, description="gradient clipping (global L2 norm)")
    seed: int = Field(42, description="seeds sampling, readouts, initial state")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute dtype: auto = bf16 autocast on CUDA, float32 on CPU")
    device: str | None = Field(None, description="cuda, cpu or None (CUDA when available)")
    max_length: int = Field(512, ge=8, description="prompt tokens kept (the chat-template tail survives)")
    max_train_samples: int | None = Field(None, ge=4, description="cap on training prompts (class-balanced)")
    match: Matching = Field("none", description="matching of class statistics: none | mean | cov")
    mean_penalty: PenaltyKind = Field("l1", description="mean penalty: l1 = mean|Δμ|, l2 = mean Δμ²")
    cov_penalty: PenaltyKind = Field("l2", description="cov penalty: l1 = Σ|ΔC|/H², l2 = ‖ΔC‖²_F/H²")
    lambda_mean: float = Field(100.0, ge=0.0, description="weight of the mean penalty")
    lambda_cov: float = Field(100.0, ge=0.0, description="weight of the covariance penalty")
    multi_layer: bool = Field(True, description="average over every block output (else last block only)")
    readout: ReadoutConfig = Field(default_factory=ReadoutConfig)
    kd_lambda: float = Field(0.0, ge=0.0, description="weight of the KD term (0 = off)")
    kd_T: float = Field(1.0, gt=0.0, description="KD temperature")
    teacher_batch_size: int = Field(64, ge=1, description="rows per forward when caching teacher logits")
    kd_reply_tokens: int = Field(
        0, ge=0, le=512, description="reply KD: the teacher's greedy reply of R tokens to every training prompt, "
                                     "KL at each reply position too (0 or 1 = off: last prompt position only)")
    kd_reply_cache_mb: float = Field(
        1024.0, ge=0.0, description="cache the teacher's reply logits up to this size (MiB); above it a frozen "
                                    "teacher copy runs on every micro-batch instead")
    ablation: Ablation = Field(
        "none", description="refusal-direction ablation in training: none | refat (ReFAT) | random (DeepRefusal)")
    refat_p: float = Field(0.5, ge=0.0, le=1.0,
                           description="P(a harmful example gets an ablated copy trained to still refuse)")
    refat_harmless_p: float = Field(
        0.0, ge=0.0, le=1.0, description="P(a harmless example gets an ablated copy trained to keep the teacher's "
                                         "unablated reply); 0 = ReFAT (harmful examples only)")
    refat_lambda: float = Field(1.0, ge=0.0, description="weight of the refusal KD on the ablated copies")
    refat_interval: int = Field(
        1, ge=0, description="optimizer steps between re-estimates of the refusal directions "
                             "(0 = never: the source model's directions, estimated once)")
    refat_directions: int = Field(1, ge=1, le=64, description="refusal directions ablated (at most one per layer)")
    refat_layers: list[int] | None = Field(
        None, description="residual indices (1 … L-1) the directions are read at; default: the attack's "
                          "candidate layers 1 … int((1-eval.attack_prune_frac)·L)")
    refat_samples: int = Field(32, ge=2, description="recent training prompts per class the estimate averages")
    random_p_layer: float = Field(0.5, ge=0.0, le=1.0,
                                  description="ablation=random: P(a layer of an ablated copy is ablated)")
    random_p_position: float = Field(0.5, ge=0.0, le=1.0,
                                     description="ablation=random: P(a position of an ablated layer is ablated)")
    eval: TrainEvalConfig = Field(default_factory=TrainEvalConfig)

    @model_validator(mode="after")
    def _statistics_defined(self) -> TrainConfig:
        # batching=shuffled is the method's convention: any micro-batch; a micro-batch that defines
        # no class statistic is counted (trainer.degenerate_steps), not refused
        balanced = self.batching == "balanced"
        if balanced and self.micro_batch % 2:
            raise ValueError(f"micro_batch must be even (half harmful, half harmless), got {self.micro_batch}")
        if balanced and self.match == "cov" and self.micro_batch < 4:
            raise ValueError(
                f"match=cov needs >= 2 samples per class in each micro-batch: set micro_batch >= 4 "
                f"(got {self.micro_batch}; the method's 2 makes the covariance term identically zero)")
        if self.refat_layers is not None:
            layers = self.refat_layers
            if not layers or any(i < 1 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"refat_layers must be distinct residual indices >= 1 (block outputs), got {layers}")
            if self.refat_directions > len(layers):
                raise ValueError(f"refat_directions={self.refat_directions} needs as many refat_layers "
                                 f"(one direction per layer), got {len(layers)}: {layers}")
        return self

    @property
    def uses_kd(self) -> bool:
        return self.kd_lambda > 0.0

    @property
    def uses_ablation(self) -> bool:
        """Refusal-direction ablation in training (refat or random)."""
        return self.ablation != "none"

    @property
    def uses_teacher(self) -> bool:
        """Some loss term has the frozen teacher's distribution as target (KD, or the refusal under
        ablation)."""
        return self.uses_kd or self.uses_ablation

    @property
    def uses_reply_kd(self) -> bool:
        """KD targets include the teacher's greedy reply positions."""
        return self.uses_teacher and self.kd_reply_tokens >= 2

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.grad_accum

    def with_knobs(self, knobs: Mapping[str, Any], source: str = "trial config") -> TrainConfig:
        """A validated copy with ``knobs`` set: dotted paths (``readout.chat_ratio``) and/or nested
        mappings (a condition preset, ``{"readout": {...}}``). A bad combination is a ConfigError."""
        nested: dict[str, Any] = {}
        for key, value in knobs.items():
            *sections, leaf = key.split(".")
            node = nested
            for part in sections:
                node = node.setdefault(part, {})
            if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
                node[leaf].update(value)
            else:
                node[leaf] = dict(value) if isinstance(value, Mapping) else value
        return _updated(self, nested, source)


# ---------------------------------------------------------------------------------------------
# Sweep


class ParamSpec(StrictModel):
    """One searched hyperparameter. ``loguniform``/``uniform`` need ``low < high``; ``choice``
    needs ``values``. Keys of :attr:`SweepConfig.space` are dotted :class:`TrainConfig` paths
    (``lambda_cov``, ``readout.chat_ratio``) or ``condition`` (a choice over named presets)."""

    type: Literal["loguniform", "uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.type} needs low < high, got low={self.low} high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def contains(self, value: Any) -> bool:
        if self.type == "choice":
            return value in (self.values or [])
        return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]


class ResourcesConfig(StrictModel):
    """Resources of one trial (one fine-tune): 1 GPU on a cluster, CPUs on a laptop."""

    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)


class AshaConfig(StrictModel):
    """ASHA early stopping on ``training_iteration`` (= epoch); ``max_t`` is ``train.epochs``."""

    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0, description="keep the top 1/rf at each rung")


class SweepConfig(StrictModel):
    """Ray Tune sweep: OptunaSearch (seeded; named presets evaluated first) × ASHAScheduler."""

    space: dict[str, ParamSpec] = Field(default_factory=dict, description="searched TrainConfig paths")
    num_samples: int = Field(8, ge=1, description="trials in total (presets included)")
    max_concurrent_trials: int = Field(2, ge=1)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    asha: AshaConfig = Field(default_factory=AshaConfig)
    optuna_seed: int = Field(0, description="seed of Optuna's TPE sampler")
    points_to_evaluate: list[str] = Field(default_factory=list, description="preset names tried first")
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="extra named presets (partial TrainConfig), override built-ins")
    max_failures: int = Field(2, ge=0, description="restarts of a failed trial (from its checkpoint)")
    metric: str = Field("objective", description="reported metric ASHA and Optuna optimise")
    mode: Literal["max", "min"] = "max"
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept per trial in Tune's storage")
    reuse_actors: bool = Field(True, description="reuse trial worker processes (saves imports)")
    data_dir: str | None = Field(None, description="study dataset dir (default <study>/data)")

    @model_validator(mode="after")
    def _space_keys(self) -> SweepConfig:
        for key in self.space:
            if key != "condition":
                check_train_path(key)
        return self


class RaySettings(StrictModel):
    """How to reach Ray: ``address`` None starts a local instance with ``num_cpus``/``num_gpus``."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)


class TrackingSettings(StrictModel):
    """MLflow: ``uri`` None/``sqlite`` = ``<study>/mlflow.db``; ``env``; ``sqlite:///…``; ``http://…``."""

    uri: str | None = None
    experiment: str | None = None


M = TypeVar("M", bound=BaseModel)


def _updated(model: M, update: dict[str, Any], source: str) -> M:
    """``model`` with ``update`` applied (nested dicts update sub-models), validated as a whole."""
    fields = dict(model)
    for key, value in update.items():
        current = fields.get(key)
        fields[key] = _updated(current, value, source) if isinstance(value, dict) and isinstance(current, BaseModel) \
            else value
    return build_config(type(model), fields, source)


def check_train_path(path: str) -> None:
    """Raise ``ValueError`` unless ``path`` (dotted) names a :class:`TrainConfig` field."""
    cls: Any = TrainConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = getattr(cls, "model_fields", None)
        if fields is None or part not in fields:
            raise ValueError(f"`{path}` is not a train setting (unknown `{'.'.join(parts[: i + 1])}`)")
        cls = fields[part].annotation
