"""Behavioural evaluation: greedy replies to held-out prompts, judged → refusal rates with intervals.

Used at K = 0 (the model as it is) and after every step of the attack (the K chosen directions
ablated at three sites of every layer, through the hf backend's ``intervention`` hook). A rate is
k refused out of n prompts; its 95% interval is Wilson's (:func:`irr_ray.core.stats.wilson_interval`).
Judge parse errors (WildGuard) count as not refused, as in the data stage, and are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.attack.config import EvalGenerationConfig
from irr_ray.attack.prompts import PromptPair
from irr_ray.core.hooks import ablate_directions
from irr_ray.core.stats import wilson_interval
from irr_ray.generation.hf import generate_greedy
from irr_ray.judges.base import Judge

N_EXAMPLES = 3  # replies per class kept for inspection (examples.json)


@dataclass(frozen=True)
class RefusalRates:
    """Judged refusals of harmful and harmless prompts."""

    harmful_refused: int
    harmful_n: int
    harmless_refused: int
    harmless_n: int
    parse_errors: int = 0
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, compare=False)

    @property
    def harmful(self) -> float:
        return self.harmful_refused / self.harmful_n if self.harmful_n else float("nan")

    @property
    def harmless(self) -> float:
        return self.harmless_refused / self.harmless_n if self.harmless_n else float("nan")

    def row(self) -> dict[str, Any]:
        """The behavioural keys of a K-curve row (design.md, "Attack result")."""
        return {
            "refusal_harmful": self.harmful,
            "refusal_harmless": self.harmless,
            "refusal_harmful_ci": list(wilson_interval(self.harmful_refused, self.harmful_n)),
            "refusal_harmless_ci": list(wilson_interval(self.harmless_refused, self.harmless_n)),
        }

    def counts(self) -> dict[str, int]:
        return {"harmful_refused": self.harmful_refused, "harmful_n": self.harmful_n,
                "harmless_refused": self.harmless_refused, "harmless_n": self.harmless_n,
                "judge_parse_errors": self.parse_errors}


class BehaviourEvaluator:
    """Generate greedily for a fixed prompt pair and judge the replies; one model, many ablations."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        judge: Judge,
        prompts: PromptPair,
        generation: EvalGenerationConfig,
        k0_generate: Any | None = None,
    ) -> None:
        """``k0_generate``: optional ``prompts -> replies`` callable used when no direction is
        ablated (the vLLM backend at K = 0); ablated evaluations always use hf ``generate``."""
        self.model = model
        self.tokenizer = tokenizer
        self.judge = judge
        self.prompts = prompts
        self.generation = generation
        self.k0_generate = k0_generate

    def _generate(self, prompts: Sequence[str], directions: torch.Tensor | None) -> list[str]:
        if (directions is None or directions.shape[0] == 0) and self.k0_generate is not None:
            return list(self.k0_generate(list(prompts)))
        intervention = None
        if directions is not None and directions.shape[0] > 0:
            d = directions.to(next(self.model.parameters()).device)
            intervention = lambda: ablate_directions(self.model, d)  # noqa: E731
        return generate_greedy(self.model, self.tokenizer, list(prompts),
                               max_new_tokens=self.generation.max_new_tokens,
                               batch_size=self.generation.batch_size, intervention=intervention)

    def run(self, directions: torch.Tensor | None = None) -> RefusalRates:
        """Refusal rates with ``directions`` [K, D] (orthonormal rows) ablated; None = the plain model."""
        prompts = [*self.prompts.harmful, *self.prompts.harmless]
        replies = self._generate(prompts, directions)
        verdicts = self.judge.judge(prompts, replies)
        refused = [bool(v.predicted_refusal) for v in verdicts]
        nh = len(self.prompts.harmful)
        examples = {
            cls: [{"prompt": p, "response": r, "refused": f}
                  for p, r, f in list(zip(prompts[lo:hi], replies[lo:hi], refused[lo:hi]))[:N_EXAMPLES]]
            for cls, lo, hi in (("harmful", 0, nh), ("harmless", nh, len(prompts)))
        }
        return RefusalRates(
            harmful_refused=sum(refused[:nh]), harmful_n=nh,
            harmless_refused=sum(refused[nh:]), harmless_n=len(prompts) - nh,
            parse_errors=sum(bool(v.judge_parse_error) for v in verdicts), examples=examples,
        )
