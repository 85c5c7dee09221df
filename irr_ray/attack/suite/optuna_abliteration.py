"""Per-layer weighted abliteration searched by multi-objective Optuna TPE (heretic, p-e-w).

This is the search of current community abliteration tools, following heretic
(https://github.com/p-e-w/heretic: ``src/heretic/main.py`` for the search space and study,
``src/heretic/model.py::Model.abliterate`` for the edit, ``src/heretic/evaluator.py`` for the
objectives).

**Directions.** For every residual index ℓ = 0 … L (x_0 the embeddings, x_ℓ the output of block
ℓ − 1) the unit difference of means at the last prompt position over the extraction prompts,

    r_ℓ = normalize(μ_harmful[ℓ] − μ_harmless[ℓ]).

(heretic reads HF ``hidden_states`` at the last prompt position, in the forward pass that yields
the first generated token; its last entry is after the final norm, ours is the raw last block
output.)

**Parameters** of a trial (heretic's ranges, with ``last`` = L − 1):

* ``direction_scope`` ∈ {global, per layer}; ``direction_index`` ∈ [0.4·last, 0.9·last]: with the
  global scope every block uses r(i) = normalize(lerp(r_{⌊i⌋+1}, r_{⌊i⌋+2}, i − ⌊i⌋)); with the per
  layer scope block l uses its own output direction r_{l+1};
* per component c ∈ ``settings.components`` (``attn``: the attention out-projection, ``mlp``: the
  MLP down-projection) a layer-weight kernel: ``max_weight`` ∈ [0.8, 1.5] (MLP: [−0.25, 1.5] clamped
  at 0, so the search can switch the MLP edit off), ``max_weight_position`` p ∈ [0.6·last, last],
  ``min_weight`` = f·max_weight with f ∈ [0, 1], ``min_weight_distance`` d ∈ [1, 0.6·last]:

      w_l = max_weight + (|l − p| / d)·(min_weight − max_weight)   for |l − p| ≤ d, else 0.

**Edit** (heretic's abliteration): every matrix W of component c in block l that writes into the
residual stream loses w_l times its output component along that block's direction r:

    W ← W − w_l · r rᵀ W        (bias b ← b − w_l · r (r·b))

(for nn.Linear, weight [D_out, D_in]; a GPT-2 ``Conv1D`` stores [D_in, D_out] and gets
W ← W − w_l · (W r) rᵀ). Where a family's write site is a post-norm (Gemma2/3, OLMo2/3, GLM-4; see
:mod:`irr_ray.models.families`) the projection *feeding* that norm is edited, as heretic does —
there the edit is approximate: the norm's rescaling and per-channel gain put part of r back.

**Objectives** (both minimised, heretic's two): the number of harmful scoring prompts whose greedy
first token is a refusal token (``ctx.refusal_ids``; heretic generates a short reply and matches
refusal markers — the first token is this project's fast stand-in, ``ctx.judge`` is not used), and
the mean first-token KL(unedited ‖ edited) over the harmless scoring prompts (heretic's
``F.kl_div(logprobs, base_logprobs, reduction="batchmean", log_target=True)``). Heretic shapes the
KL objective around a target; here the raw pair is the study's objective. The study is
``optuna.samplers.TPESampler(multivariate=True)`` with ``startup_trials`` random trials, directions
(minimize, minimize), stored in SQLite under ``ctx.work_dir``, as heretic stores its study in a
journal file to resume an interrupted run.

**Determinism and resume.** The trial after n finished ones is sampled by a TPE sampler seeded with
(seed, n), so a study resumed from its SQLite file draws exactly what an uninterrupted run would;
finished trials are never recomputed (a trial an interrupted run left running is marked failed,
which TPE ignores). The study remembers a key of everything its trials depend on; another key starts
a new study.

**Choice at budget b** (among the first b finished trials): the lowest refusal count among trials
with KL ≤ ``kl_bound`` (ties: lower KL, then the earlier trial); with none inside the bound, the
lowest-KL trial (``info["within_kl_bound"] = False``). Heretic lets a user pick from the Pareto
front; this is that pick made by rule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from transformers.pytorch_utils import Conv1D

from irr_ray.attack.candidates import encode_batches
from irr_ray.attack.suite.base import AttackContext, BudgetStep, SuiteAttack, patched_parameters
from irr_ray.attack.suite.settings import OptunaAbliterationSettings
from irr_ray.config import config_dict, stable_hash
from irr_ray.core.hooks import ResidualCapture
from irr_ray.core.scoring import EncodedPrompts, kl_before_after, last_position_logits, refusal_log_odds
from irr_ray.errors import IrrRayError
from irr_ray.models.families import Layout, get_layout
from irr_ray.utils.files import write_json_atomic

__all__ = [
    "AbliterationParameters",
    "OptunaAbliterationAttack",
    "WriteMatrix",
    "abliteration_parameters",
    "abliteration_replacements",
    "layer_weights",
    "pareto_front",
    "refusal_directions",
    "write_matrices",
]

log = logging.getLogger(__name__)

STUDY_NAME = "optuna_abliteration"
COMPONENTS = ("attn", "mlp")
# Output projections of the attention / MLP modules, tried in order (Llama-like, GPT-2, Phi, GLM, …).
_ATTN_OUT = ("o_proj", "out_proj", "c_proj", "dense")
_MLP_OUT = ("down_proj", "c_proj", "fc2", "w2", "dense_4h_to_h")


# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class AbliterationParameters:
    """One component's layer-weight kernel (heretic's ``AbliterationParameters``)."""

    max_weight: float
    max_weight_position: float
    min_weight: float
    min_weight_distance: float


def suggest(trial: optuna.Trial, num_layers: int, components: Sequence[str]) -> dict[str, Any]:
    """Sample heretic's search space (module docstring) into ``trial``; returns its params.

    Every parameter is sampled in every trial (``direction_index`` also under the per-layer scope,
    ``min_weight`` as a fraction of ``max_weight``): multivariate TPE needs fixed, unconditional
    ranges (heretic's comment on the same choice).
    """
    last = max(num_layers - 1, 0)
    trial.suggest_categorical("direction_scope", ["global", "per layer"])
    trial.suggest_float("direction_index", 0.4 * last, 0.9 * last)
    for c in components:
        trial.suggest_float(f"{c}.max_weight", -0.25 if c == "mlp" else 0.8, 1.5)
        trial.suggest_float(f"{c}.max_weight_position", 0.6 * last, 1.0 * last)
        trial.suggest_float(f"{c}.min_weight", 0.0, 1.0)
        trial.suggest_float(f"{c}.min_weight_distance", 1.0, max(1.0, 0.6 * last))
    return dict(trial.params)


def abliteration_parameters(params: dict[str, Any], components: Sequence[str]) -> dict[str, AbliterationParameters]:
    """The kernels of a trial's raw params: max_weight clamped at 0, min_weight = fraction · max_weight."""
    out = {}
    for c in components:
        max_weight = max(0.0, float(params[f"{c}.max_weight"]))
        out[c] = AbliterationParameters(max_weight=max_weight,
                                        max_weight_position=float(params[f"{c}.max_weight_position"]),
                                        min_weight=float(params[f"{c}.min_weight"]) * max_weight,
                                        min_weight_distance=float(params[f"{c}.min_weight_distance"]))
    return out


def layer_weights(p: AbliterationParameters, num_layers: int) -> torch.Tensor:
    """w_l for l = 0 … L − 1 [L] float64: linear from max_weight at p to min_weight at distance d, 0 beyond."""
    distance = (torch.arange(num_layers, dtype=torch.float64) - p.max_weight_position).abs()
    w = p.max_weight + distance / p.min_weight_distance * (p.min_weight - p.max_weight)
    return torch.where(distance <= p.min_weight_distance, w, torch.zeros_like(w))


def block_directions(directions: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """The unit direction each block's edit removes, [L, D], from the per-residual directions
    ``directions`` [L + 1, D] (r_0 = embeddings): r_{l+1} per layer, or the interpolated global one."""
    num_layers = directions.shape[0] - 1
    if params["direction_scope"] == "per layer":
        return directions[1:]
    frac, index = math.modf(float(params["direction_index"]) + 1.0)
    lo = min(int(index), num_layers)
    hi = min(lo + 1, num_layers)
    r = F.normalize(torch.lerp(directions[lo], directions[hi], frac), dim=0)
    return r.unsqueeze(0).expand(num_layers, -1)


# ---------------------------------------------------------------------------- directions


@torch.no_grad()
def refusal_directions(model: nn.Module, harmful: Sequence[EncodedPrompts],
                       harmless: Sequence[EncodedPrompts]) -> torch.Tensor:
    """r_ℓ = normalize(μ_harmful[ℓ] − μ_harmless[ℓ]) at the last prompt position for every residual
    index ℓ = 0 … L, [L + 1, D] float32 (a zero difference, e.g. of the embeddings of a fixed
    template token, stays zero)."""
    num_layers = get_layout(model).num_layers
    means = []
    with ResidualCapture(model, layers=range(num_layers + 1), positions=[-1]) as cap:
        for batches in (harmful, harmless):
            total, count = None, 0
            for batch in batches:
                acts = cap.run(batch["input_ids"], batch["attention_mask"])[:, :, 0].double().sum(1)  # [L+1, D]
                total = acts if total is None else total + acts
                count += batch["input_ids"].shape[0]
            if total is None:
                raise ValueError("refusal_directions: no prompts")
            means.append(total / count)
    return F.normalize(means[0] - means[1], dim=-1).float()


# ---------------------------------------------------------------------------- the edit


@dataclass(frozen=True)
class WriteMatrix:
    """A matrix writing into the residual stream: its parameter names (``named_parameters``), the
    block, the component, and whether the residual is its last weight dim (``Conv1D``)."""

    weight: str
    bias: str | None
    layer: int
    component: str
    transposed: bool


def _output_projection(module: nn.Module, names: Sequence[str], width: int) -> nn.Module | None:
    for name in names:
        sub = getattr(module, name, None)
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            out_dim = w.shape[1] if isinstance(sub, Conv1D) else w.shape[0]
            if out_dim == width:
                return sub
    return None


def write_matrices(model: nn.Module, components: Sequence[str]) -> tuple[list[WriteMatrix], bool]:
    """The attention out- and MLP down-projections of every block (heretic's abliterable matrices),
    and whether the edit is approximate (a post-norm sits between them and the residual stream)."""
    layout: Layout = get_layout(model)
    width = int(model.config.hidden_size)
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    out = []
    for i in range(layout.num_layers):
        for c in components:
            parent = layout.attn(i) if c == "attn" else layout.mlp(i)
            proj = _output_projection(parent, _ATTN_OUT if c == "attn" else _MLP_OUT, width)
            if proj is None:
                tried = ", ".join(_ATTN_OUT if c == "attn" else _MLP_OUT)
                raise IrrRayError(f"optuna_abliteration: block {i} {type(parent).__name__} has no {c} output "
                                  f"projection writing {width} channels (looked for .{tried}); mixture-of-experts "
                                  "and fused layouts are not supported")
            prefix = names[id(proj)]
            bias = getattr(proj, "bias", None)
            out.append(WriteMatrix(weight=f"{prefix}.weight", bias=f"{prefix}.bias" if bias is not None else None,
                                   layer=i, component=c, transposed=isinstance(proj, Conv1D)))
    approximate = (layout.attn_write_name != layout.attn_name) or (layout.mlp_write_name != layout.mlp_name)
    return out, approximate


@torch.no_grad()
def abliteration_replacements(model: nn.Module, matrices: Sequence[WriteMatrix], directions: torch.Tensor,
                              params: dict[str, Any], components: Sequence[str]) -> dict[str, torch.Tensor]:
    """New values of every edited parameter for a trial's ``params`` (module docstring), computed in
    float32 from the model's current parameters; blocks with weight 0 are left out."""
    num_layers = directions.shape[0] - 1
    kernels = abliteration_parameters(params, components)
    weights = {c: layer_weights(k, num_layers) for c, k in kernels.items()}
    per_block = block_directions(directions, params)
    live = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    for m in matrices:
        w = float(weights[m.component][m.layer])
        if w == 0.0:
            continue
        weight = live[m.weight]
        r = per_block[m.layer].to(device=weight.device, dtype=torch.float32)
        wf = weight.detach().float()
        if m.transposed:  # Conv1D [D_in, D_out]: W ← W − w (W r) rᵀ
            out[m.weight] = wf - w * torch.outer(wf @ r, r)
        else:  # Linear [D_out, D_in]: W ← W − w r (rᵀ W)
            out[m.weight] = wf - w * torch.outer(r, r @ wf)
        if m.bias is not None:
            b = live[m.bias].detach().float()
            out[m.bias] = b - w * (r @ b) * r
    return out


# ---------------------------------------------------------------------------- Pareto front


def pareto_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials no other trial beats on both refusals and KL (heretic's front: sorted by (refusals,
    KL), each kept when its KL is below every KL before it)."""
    front, best_kl = [], math.inf
    for t in sorted(trials, key=lambda t: (t.user_attrs["refusals"], t.user_attrs["kl"], t.number)):
        if t.user_attrs["kl"] < best_kl:
            best_kl = t.user_attrs["kl"]
            front.append(t)
    return front


def _trial_record(t: FrozenTrial, components: Sequence[str]) -> dict[str, Any]:
    kl = t.user_attrs.get("kl")
    return {"number": t.number, "state": t.state.name, "params": dict(t.params),
            "kernels": ({c: asdict(k) for c, k in abliteration_parameters(t.params, components).items()}
                        if t.state == TrialState.COMPLETE else None),
            "refusals": t.user_attrs.get("refusals"),
            "kl": kl if kl is None or math.isfinite(kl) else None,
            "mean_refusal_log_odds": t.user_attrs.get("mean_refusal_log_odds"),
            "seconds": t.user_attrs.get("seconds")}


# ---------------------------------------------------------------------------- the search


class _Search:
    """The study and everything a trial needs (directions, encoded scoring prompts, base logits)."""

    def __init__(self, ctx: AttackContext, settings: OptunaAbliterationSettings) -> None:
        self.ctx, self.settings = ctx, settings
        self.components = list(dict.fromkeys(settings.components))
        if not self.components:
            raise ValueError("optuna_abliteration: components must name at least one of attn, mlp")
        model, tok, cfg = ctx.model, ctx.tokenizer, ctx.cfg
        device = ctx.device
        self.num_layers = get_layout(model).num_layers
        self.matrices, self.approximate = write_matrices(model, self.components)
        if self.approximate:
            log.warning("optuna_abliteration: %s writes through post-norms; the projections feeding them are "
                        "edited (as heretic does), which removes the direction only approximately",
                        get_layout(model).model_type)
        bs, max_len = cfg.extract_batch_size, cfg.max_prompt_tokens
        extract = ctx.prompts.extract
        self.directions = refusal_directions(
            model, encode_batches(tok, extract.harmful, bs, device, max_len),
            encode_batches(tok, extract.harmless, bs, device, max_len)).to(device)
        n = settings.n_prompts
        self.harmful_prompts, self.harmless_prompts = ctx.prompts.score.harmful[:n], ctx.prompts.score.harmless[:n]
        self.harmful = encode_batches(tok, self.harmful_prompts, bs, device, max_len)
        self.harmless = encode_batches(tok, self.harmless_prompts, bs, device, max_len)
        self.refusal_ids = torch.as_tensor(ctx.refusal_ids, dtype=torch.long, device=device)
        self.base_refusals, _, _ = self._harmful_refusals()
        self.base_logits = [self._logits(b) for b in self.harmless]
        self.study = self._open_study()

    # -- scoring

    @torch.no_grad()
    def _logits(self, batch: EncodedPrompts) -> torch.Tensor:
        return last_position_logits(self.ctx.model, batch["input_ids"], batch["attention_mask"]).float()

    def _harmful_refusals(self) -> tuple[int, float, torch.Tensor]:
        logits = torch.cat([self._logits(b) for b in self.harmful])
        refused = torch.isin(logits.argmax(-1), self.refusal_ids)
        return int(refused.sum()), float(refusal_log_odds(logits, self.refusal_ids).mean()), refused

    def score(self) -> tuple[int, float, float]:
        """(refusals on the harmful scoring prompts, mean KL(unedited ‖ current) on the harmless ones,
        mean refusal log-odds on the harmful ones) of the model as it is now."""
        refusals, log_odds, _ = self._harmful_refusals()
        kl = torch.cat([kl_before_after(base, self._logits(b)) for base, b in zip(self.base_logits, self.harmless)])
        value = float(kl.mean())
        return refusals, (value if math.isfinite(value) else math.inf), log_odds

    def replacements(self, params: dict[str, Any]) -> dict[str, torch.Tensor]:
        return abliteration_replacements(self.ctx.model, self.matrices, self.directions, params, self.components)

    @contextlib.contextmanager
    def patched(self, params: dict[str, Any]) -> Iterator[None]:
        """The model with a trial's edit in place (computed on entry, undone on exit)."""
        with patched_parameters(self.ctx.model, self.replacements(params)):
            yield

    # -- the study

    def key(self) -> str:
        """What finished trials depend on: the model, the prompts, the seed and the search settings."""
        settings = config_dict(self.settings)
        for budget_knob in ("budgets", "kl_bound"):
            settings.pop(budget_knob)
        cfg = self.ctx.cfg
        return stable_hash({
            "model": str(getattr(self.ctx.model.config, "_name_or_path", "")),
            "shape": [self.num_layers, int(self.ctx.model.config.hidden_size)],
            "dtype": str(next(self.ctx.model.parameters()).dtype),
            "seed": self.ctx.seed, "settings": settings, "refusal_ids": sorted(self.ctx.refusal_ids),
            "extract": [self.ctx.prompts.extract.harmful, self.ctx.prompts.extract.harmless],
            "score": [self.harmful_prompts, self.harmless_prompts],
            "max_prompt_tokens": cfg.max_prompt_tokens,
        })

    def _open_study(self) -> optuna.Study:
        root = self.ctx.work_dir / "optuna_abliteration"
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "study.db"
        storage = optuna.storages.RDBStorage(f"sqlite:///{self.db}")
        key = self.key()
        if STUDY_NAME in {s.study_name for s in storage.get_all_studies()}:
            study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
            if study.user_attrs.get("key") == key:
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # left by an interrupted run
                return study
            log.info("optuna_abliteration: the study in %s is for another model/config; starting over", self.db)
            optuna.delete_study(study_name=STUDY_NAME, storage=storage)
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=["minimize", "minimize"])
        study.set_user_attr("key", key)
        return study

    def finished(self) -> list[FrozenTrial]:
        return sorted(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)

    def sampler(self, n_finished: int) -> optuna.samplers.TPESampler:
        """The sampler of the trial after ``n_finished`` finished ones, seeded with (seed, n_finished):
        a resumed study (even one interrupted inside a trial, which is then marked failed and ignored)
        draws exactly what an uninterrupted one would."""
        seed = int(np.random.SeedSequence([self.ctx.seed & 0xFFFFFFFF, n_finished]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.settings.startup_trials,
                                              multivariate=True)

    def objective(self, trial: optuna.Trial) -> tuple[float, float]:
        params = suggest(trial, self.num_layers, self.components)
        t0 = time.perf_counter()
        with self.patched(params):
            refusals, kl, log_odds = self.score()
        trial.set_user_attr("refusals", refusals)
        trial.set_user_attr("kl", kl)
        trial.set_user_attr("mean_refusal_log_odds", log_odds)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return float(refusals), kl

    def run_until(self, budget: int) -> int:
        """Run trials until ``budget`` have finished; returns how many new trials ran."""
        new = 0
        while (n_finished := len(self.finished())) < budget:
            self.study.sampler = self.sampler(n_finished)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.optimize(self.objective, n_trials=1, catch=())
            new += 1
        return new


# ---------------------------------------------------------------------------- the attack


class OptunaAbliterationAttack(SuiteAttack):
    """heretic's per-layer weighted abliteration, searched by multi-objective TPE (module docstring);
    the budget is the number of finished Optuna trials."""

    name = "optuna_abliteration"
    budget_axis = "trials"
    Settings = OptunaAbliterationSettings

    def __init__(self, settings: OptunaAbliterationSettings) -> None:
        super().__init__(settings)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._search: _Search | None = None
        self._budget = 0

    def _search_for(self, ctx: AttackContext) -> _Search:
        if self._search is None or self._search.ctx is not ctx:
            self._search = _Search(ctx, self.settings)
        return self._search

    def step(self, ctx: AttackContext, budget: int) -> BudgetStep:
        search = self._search_for(ctx)
        t0 = time.perf_counter()
        new = search.run_until(budget)
        elapsed = time.perf_counter() - t0
        trials = search.finished()[:budget]
        self._budget = max(self._budget, budget)
        inside = [t for t in trials if t.user_attrs["kl"] <= self.settings.kl_bound]
        if inside:
            best = min(inside, key=lambda t: (t.user_attrs["refusals"], t.user_attrs["kl"], t.number))
        else:
            best = min(trials, key=lambda t: (t.user_attrs["kl"], t.user_attrs["refusals"], t.number))
            log.warning("optuna_abliteration: no trial of %d has KL ≤ %g; using the lowest-KL trial %d (KL %.3g)",
                        len(trials), self.settings.kl_bound, best.number, best.user_attrs["kl"])
        params = dict(best.params)
        front = pareto_front(trials)
        seconds = [t.user_attrs["seconds"] for t in trials if "seconds" in t.user_attrs]
        info = {
            "trial": best.number, "params": params,
            "kernels": {c: asdict(k) for c, k in abliteration_parameters(params, search.components).items()},
            "refusals": best.user_attrs["refusals"], "kl": best.user_attrs["kl"],
            "mean_refusal_log_odds": best.user_attrs["mean_refusal_log_odds"],
            "within_kl_bound": bool(inside), "kl_bound": self.settings.kl_bound,
            "choice": ("lowest refusals among trials with KL ≤ kl_bound" if inside
                       else "no trial has KL ≤ kl_bound: the lowest-KL trial"),
            "pareto_front_size": len(front), "n_trials": len(trials), "new_trials": new,
            "n_prompts": len(search.harmful_prompts), "base_refusals": search.base_refusals,
            "refusal_count": "greedy first token in the refusal tokens",
            "approximate_edit": search.approximate,
            "seconds_per_trial": float(np.mean(seconds)) if seconds else None,
            "step_seconds": elapsed,
        }
        return BudgetStep(intervention=lambda: search.patched(params), info=info)

    def write_artifacts(self, out: Path) -> None:
        """``pareto.json`` (the Pareto-optimal trials of the last budget) and ``trials.json`` (every trial)."""
        out.mkdir(parents=True, exist_ok=True)
        search = self._search
        if search is None:
            write_json_atomic(out / "pareto.json", {"budget": 0, "front": []})
            write_json_atomic(out / "trials.json", {"trials": []})
            return
        components = search.components
        trials = search.finished()[: self._budget]
        write_json_atomic(out / "pareto.json", {
            "budget": self._budget, "objectives": ["refusals", "kl"], "n_prompts": len(search.harmful_prompts),
            "front": [_trial_record(t, components) for t in pareto_front(trials)]})
        every = sorted(search.study.get_trials(deepcopy=False), key=lambda t: t.number)
        write_json_atomic(out / "trials.json", {"trials": [_trial_record(t, components) for t in every]})
