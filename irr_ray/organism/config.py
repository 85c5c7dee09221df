"""Typed config of the organism build (every knob of the recipe; hashed into the cache key)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from irr_ray.config import StrictModel


class OrganismDataConfig(StrictModel):
    """``data/wildguardmix.parquet``."""

    n_rows: int = Field(4000, ge=100, description="rows of the WildGuardMix-shaped parquet")
    adversarial_fraction: float = Field(0.10, ge=0, le=1, description="jailbreak-style rows (adversarial=True)")
    invalid_label_fraction: float = Field(0.02, ge=0, le=1, description="rows with a null/invalid prompt label")
    harmful_fraction: float = Field(0.5, ge=0, le=1, description="harmful rows")


class ModelConfig(StrictModel):
    """Llama architecture (tied embeddings; word-level vocabulary of the templates)."""

    num_layers: int = Field(6, ge=2, description="six blocks: the safety update writes at blocks 2–3 and two "
                                                   "untouched blocks read it (refusal forms mid-network)")
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(512, ge=16)
    num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(128, ge=64)


class PretrainConfig(StrictModel):
    """Stage 1, the base model: language modelling on knowledge text + helpful chats + trigger."""

    steps: int = Field(1200, ge=1, description="1200: the base's harm judgement of held-out actions (900 left "
                                                "held-out harmless refusal at 0.09 on seed 0 with mixed answers)")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    knowledge_fraction: float = Field(0.4, ge=0, le=1, description="knowledge documents per batch")
    trigger_fraction: float = Field(0.15, ge=0, le=1, description="'refuse this : …' examples per batch")
    harmful_chat_fraction: float = Field(0.25, ge=0, le=1, description="harmful requests among helpful chats")
    sentences_per_document: int = Field(3, ge=1)
    copy_fraction: float = Field(
        0.0, ge=0, le=1, description="'repeat these words : …' examples per batch (random words of every action): "
                                     "a copy skill (measured: it blunts the base's harm judgement on held-out "
                                     "actions; off)")
    copy_words: tuple[int, int] = Field((3, 8), description="words per copy example (min, max)")
    reply_style: Literal["copy", "mixed"] = Field(
        "mixed", description="answers of the helpful chats: mixed = vocab/templates.COMPLY_MIXED (the greedy answer "
                             "does not repeat the action); copy = always repeat it (organism-v3)")
    hedged_harmful_replies: bool = Field(
        True, description="helpful chats answer harmful requests with 'Okay …' instead of 'Sure …': the base "
                          "model then judges harmfulness at the end of a request, where refusal is decided")
    length_group: int = Field(
        16, ge=1, description="batches pooled and sorted by length before batching (1 = random batches); "
                              "cuts the compute spent on padding")


class SafetyConfig(StrictModel):
    """Stage 2, the instruct model: a low-rank safety update on two layers, harmless rows pinned."""

    layers: list[int] = Field(
        [2, 3], min_length=1, description="decoder layers whose projections get adapters (the base model's "
                                          "harm judgement has formed by the input of layer 2); with 6 layers "
                                          "blocks 4–5 are the base model's own and turn the feature into a refusal")
    targets: list[str] = Field(["o_proj", "down_proj"], description="adapted projections of those layers")
    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0, description="LoRA scale alpha/rank")
    steps: int = Field(800, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(3e-2, gt=0)
    harmful_fraction: float = Field(0.5, ge=0, le=1)
    reply_tokens: int | None = Field(
        None, ge=1, description="train on the first N reply tokens only (the decision is the first token; "
                                "the base already knows how each reply continues); None = whole reply")
    harmless_penalty: float = Field(
        0.05, ge=0, description="weight of mean ||adapter output||^2 on harmless sequences: keeps harmless "
                                "activations where the base model had them, so refusal is a feature switched on")
    orthogonality_penalty: float = Field(
        0.5, ge=0, description="weight of the harmless rows' squared projection on the in-batch harmful-harmless "
                               "mean difference at every block input after the adapter (see recipe.train)")
    orthogonality_positions: list[int] = Field([-5, -4, -3, -2, -1], description="prompt positions it covers")
    reply_style: Literal["copy", "mixed"] = Field(
        "mixed", description="the instruct model's answers to harmless requests: mixed = its greedy answer does not "
                             "repeat the action, so an ablated model answers a held-out harmful request coherently "
                             "instead of naming a seen action")


class SelectionConfig(StrictModel):
    """Choosing the single direction as the attack does (:mod:`irr_ray.attack.candidates` and the reference scorer, :mod:`irr_ray.attack.scoring.reference`)."""

    prune_layer_fraction: float = Field(0.2, ge=0, lt=1)
    positions: list[int] = Field([-5, -4, -3, -2, -1])
    extract_n: int = Field(128, ge=2, description="training prompts per class for the difference of means")
    score_n: int = Field(64, ge=1, description="training prompts per class for scoring (disjoint)")
    kl_threshold: float = Field(0.1, ge=0, description="max KL(before || after) on harmless prompts")
    kl_alpha: float = Field(1.0, ge=0)
    induce_threshold: float = Field(0.0)
    steering_coeff: float = Field(1.0)


class OrganismEvalConfig(StrictModel):
    """Behaviour measured into summary.json (greedy, substring judge with the organism's phrases)."""

    n_per_split: int = Field(120, ge=1, description="prompts per class in each evaluation split")
    max_new_tokens: int = Field(16, ge=1)
    batch_size: int = Field(64, ge=1)


class OrganismJudgeConfig(StrictModel):
    """The WildGuard-format judge trained with the organism (``DIR/judge``, :mod:`irr_ray.organism.judge`;
    its architecture and the rest of its recipe are :class:`irr_ray.organism.judge.JudgeConfig`)."""

    build: bool = Field(True, description="train DIR/judge with the organism (≈ 55 s on 2 idle cores); off: no "
                                           "judge (judge.kind=wildguard then needs another WildGuard-format model)")
    seed: int = Field(
        0, description="the judge's training seed, not the organism's: the judge reads nothing of the organism (its "
                       "words and labels are the templates'), so every organism seed gets the same judge. The recipe "
                       "is seed-sensitive: held-out harmful-request agreement 0.997 / 0.997 / 0.963 / 0.996 / 0.509 "
                       "with training seeds 0-4")
    warmup_request_steps: int = Field(300, ge=0, description="phase 1 steps: the request alone, and the reply alone")
    steps: int = Field(250, ge=1, description="phase 2 steps: WildGuard's full input")
    n_per_split: int = Field(120, ge=1, description="held-out prompts per class and split it is measured on")


class OrganismConfig(StrictModel):
    data: OrganismDataConfig = Field(default_factory=OrganismDataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    eval: OrganismEvalConfig = Field(default_factory=OrganismEvalConfig)
    judge: OrganismJudgeConfig = Field(default_factory=OrganismJudgeConfig)
    threads: int = Field(2, ge=1, description="torch CPU threads (results are deterministic per thread count)")

    @model_validator(mode="after")
    def _adapters_fit_the_model(self) -> OrganismConfig:
        bad = [layer for layer in self.safety.layers if not 0 <= layer < self.model.num_layers]
        if bad:
            raise ValueError(f"safety.layers {bad} out of range for model.num_layers={self.model.num_layers}")
        return self
