"""The one interface every attack of the suite implements, and what a budget step hands back.

An attack of the suite manipulates one model along a **budget axis** (directions ablated, cone
dimension, optimisation trials, optimizer steps). For every budget b of its schedule it returns a
:class:`BudgetStep`: how the model is changed at that budget (an ``intervention`` — a context manager
factory applied to the loaded model: hooks, or parameters swapped in place by
:func:`patched_parameters`) and a few facts to log. The runner (:mod:`irr_ray.attack.suite.runner`)
evaluates every step with the same behavioural evaluation as the method's attack
(:class:`irr_ray.attack.behaviour.BehaviourEvaluator`: greedy replies, the study's judge, the
degenerate rule, first-token refusal and KL), so every attack's per-budget curve is in the same
outcome format (:class:`irr_ray.contracts.CurveRow`, ``K`` = the budget) and gets a verdict by the
same rules (:mod:`irr_ray.core.verdict`).

Contract for implementations (``irr_ray/attack/suite/<name>.py``):

* ``name`` (registry key), ``budget_axis`` (what the budget counts), ``Settings`` (a
  :class:`~irr_ray.config.StrictModel`; the study's ``attack.<name>:`` section) with a
  ``budgets: list[int]`` field (strictly increasing, each ≥ 1);
* ``step(ctx, budget)`` is deterministic given ``ctx.seed`` and may keep state on ``self`` between
  increasing budgets (an optimiser continuing from the previous budget); anything expensive that a
  resumed run should not redo is saved under ``ctx.work_dir`` (per-attack progress directory);
* the attacker never sees the held-out evaluation prompts: use ``ctx.prompts.extract`` /
  ``ctx.prompts.score`` / ``ctx.prompts.probe`` (train split) only;
* ``write_artifacts(out)`` writes the attack's own files (directions, Pareto front, adapter) into
  the finished result directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from irr_ray.attack.config import AttackConfig
    from irr_ray.attack.prompts import PromptSets
    from irr_ray.judges.base import Judge

Intervention = Callable[[], AbstractContextManager[Any]]


@dataclass
class AttackContext:
    """What an attack may use. ``model`` is the loaded model under attack (requires_grad off, eval
    mode; an attack that trains must restore it); ``refusal_ids`` are the refusal-score tokens;
    ``base_model`` the study's base model path when one is known (a source of compliant answers);
    ``dim_directions`` the [K, D] orthonormal directions of this model's finished ``dim`` attack
    when it exists (``orthogonalize`` reuses them) and ``dim_layers`` their residual indices.
    ``judge.judge(prompts, replies) -> list[Verdict]`` (``.predicted_refusal``) is the study's judge."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptSets
    cfg: AttackConfig
    refusal_ids: list[int]
    work_dir: Path
    seed: int
    base_model: str | None = None
    data_dir: Path | None = None
    dim_directions: torch.Tensor | None = None
    dim_layers: list[int] | None = None
    judge: Judge | None = None  # the study's judge (refusal or not), for attacks that count refusals by text

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class BudgetStep:
    """The model at one budget: ``intervention`` (None = the model unchanged) and facts to log
    (JSON-serialisable: e.g. the trial's KL, the cone's refusal score, the training loss)."""

    intervention: Intervention | None
    info: dict[str, Any] = field(default_factory=dict)


class SuiteAttack(ABC):
    """One attack of the suite (module docstring)."""

    name: ClassVar[str]
    budget_axis: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def budgets(self) -> list[int]:
        return list(self.settings.budgets)

    @abstractmethod
    def step(self, ctx: AttackContext, budget: int) -> BudgetStep:
        """The model changed with ``budget`` (called with increasing budgets)."""

    def write_artifacts(self, out: Path) -> None:  # noqa: B027 - optional hook
        """Write this attack's own files into the finished result directory ``out``."""


@contextmanager
def patched_parameters(model: nn.Module, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Swap parameters (by ``named_parameters`` name) for new values in place, restore on exit.

    The weight-editing attacks (orthogonalisation, Optuna abliteration, merged LoRA deltas) change a
    model without copying it: the swap costs one copy of the replaced tensors only. Tied parameters
    (one tensor under two names) are swapped once.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in replacements if n not in params]
    if unknown:
        raise KeyError(f"patched_parameters: no parameter(s) {unknown[:3]} in {type(model).__name__}")
    saved: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
    try:
        with torch.no_grad():
            for name, value in replacements.items():
                p = params[name]
                if value.shape != p.shape:
                    raise ValueError(f"patched_parameters: {name} has shape {tuple(p.shape)}, got {tuple(value.shape)}")
                if id(p) not in saved:
                    saved[id(p)] = (p, p.detach().clone())
                p.copy_(value.to(device=p.device, dtype=p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, original in saved.values():
                p.copy_(original)
