"""Refusal direction optimisation (RDO) and refusal concept cones.

Wollschläger et al., "The Geometry of Refusal in Large Language Models: Concept Cones and
Representational Independence" (ICML 2025; code: github.com/wollschlager/geometry-of-refusal,
``rdo.py``). Instead of reading the refusal direction off a difference of means, a unit direction
r ∈ R^D is *trained* (the model frozen) to have the properties that define it:

* **ablation** — removing r at every layer (three sites: each block input and the attention / MLP
  write sites, x ← x − (x·r)r) makes the model stop refusing harmful prompts;
* **addition** — adding α·r at the input of one block ℓ⋆ makes it refuse harmless prompts;
* **retain** — ablating r changes the model's outputs on harmless prompts as little as possible.

Loss of one direction r on a batch of harmful prompts H and harmless prompts S (weights λ_abl,
λ_add, λ_ret = ``ablation_weight``, ``addition_weight``, ``retain_weight``; 1, 0.2, 1 in the paper)::

    L(r) = λ_abl · mean_H −log(1 − p_R | r ablated)          = λ_abl · mean_H softplus(ρ)
         + λ_add · mean_S −log p_R   | α·r added at ℓ⋆        + λ_add · mean_S softplus(−ρ)
         + λ_ret · mean_S KL(p_ablated ‖ p_original)

with p_R the next-token probability of the refusal tokens at the last prompt position and
ρ = log p_R − log(1 − p_R) the refusal log-odds (:func:`irr_ray.core.scoring.refusal_log_odds`).
**Surrogate, stated plainly:** the paper's ablation and addition losses are cross-entropies on
30-token target completions generated once (the DIM-ablated model's replies to harmful prompts, the
DIM-steered model's refusals of harmless ones) and its retain loss is the KL over the last 30
positions of the harmless prompt followed by the model's own reply. Here, on a CPU budget, each loss
keeps only the first reply token and replaces "that token" by the refusal-token class: −log(1 − p_R)
is the cross-entropy of "any non-refusal opener", −log p_R that of the refusal opener, and the
retain KL is taken at the last prompt position — the same statistics the paper's code uses to
filter its data and to log its bypass / induce scores (``scoring.refusal_metric``). The KL keeps the
paper's orientation (``kl_div_fn(base, ablated)`` = KL(p_ablated ‖ p_original)); the scores this
module reports use the project's KL(p_original ‖ p_ablated).

α = ‖μ_harmful − μ_harmless‖ of the chosen difference-of-means direction (the paper's
``alpha = best_refusal_direction.norm()``) and ℓ⋆ its layer (``settings.layer`` overrides ℓ⋆; α is
then the difference-of-means norm at that layer and the chosen position). r starts from the best
difference-of-means direction at K = 1 (:mod:`irr_ray.attack.candidates` scored by
:func:`irr_ray.attack.scoring.make_scorer` and chosen by
:func:`~irr_ray.attack.candidates.select_direction`, exactly as the iterated attack's first step).

**Concept cones.** For cone dimension k an orthonormal basis B = [b_1 … b_k] is trained so that every
direction of the cone {Σ_i s_i b_i : s_i ≥ 0} has the properties above. Each step draws
``cone_samples`` directions with the paper's ``hypersphere`` sampling, s = |z| / ‖z‖ with
z ~ N(0, I_k), r_s = normalise(s·B), and minimises

    (1/k) Σ_i L(b_i) + (1/S) Σ_s L(r_s)            (k ≥ 2; for k = 1 only L(b_1), as in the paper).

Basis k starts from the trained basis k − 1 plus one random vector (the paper's ``init_vectors``;
every row stays trainable). Optimisation as in the paper: AdamW (betas 0.9, 0.98, no weight decay,
amsgrad), gradients projected onto the tangent space of each unit row, clipped to norm 10,
Gram–Schmidt re-orthonormalisation after every step, lr ÷ 10 after ``patience`` steps without a
lower training loss and a stop after ``n_lr_reduce`` such reductions; the iterate with the lowest
training loss is kept. Prompts come from the train split only: training on ``prompts.extract``
(filtered, as the paper's ``filter_data``, to harmful prompts with ρ > 0 and harmless ones with
ρ < 0), the reported scores on ``prompts.score``.

**Selection of the single direction** (``settings.select``). The paper keeps the trained iterate
with the lowest training loss (``select = "train_loss"``). By default (``"score"``) the attack
then compares it with its own starting point, the best difference-of-means direction, on the
scoring prompts and keeps the one with the lower refusal log-odds among those whose KL stays
≤ max(``kl_threshold``, the start's KL): the surrogate's ablation term saturates once the refusal
token is gone (−log(1 − p_R) → 0), and the addition and retain terms can then move the direction to
a *higher* refusal score than its start (measured on organism-v4 seed 0: −8.06 against −11.30).
An attacker keeps the stronger of the two, so the suite does; ``info["selected"]`` says which
(``"trained"`` or ``"dim_start"``) with both scores. Cones of dimension ≥ 2 start from the kept
direction.

Budget k (``budget_axis = "cone_dim"``) ablates the whole span of B_k
(:func:`irr_ray.core.hooks.ablate_directions`). Each basis is saved under ``work_dir/rdo`` with its
scores and reloaded by a resumed run (keyed by the settings, the seed and the attack config).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.scoring import make_scorer
from irr_ray.attack.scoring.reference import harmless_kl, refusal_score
from irr_ray.attack.suite.base import AttackContext, BudgetStep, SuiteAttack
from irr_ray.attack.suite.settings import RDOSettings
from irr_ray.config import config_dict, stable_hash
from irr_ray.core.directions import load_directions, orthonormalize, save_directions
from irr_ray.core.hooks import ablate_directions
from irr_ray.core.scoring import EncodedPrompts, last_position_logits, refusal_log_odds
from irr_ray.errors import IrrRayError
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.families import Layout, get_layout

log = logging.getLogger(__name__)

__all__ = ["RDOAttack", "row_interventions", "sample_cone"]

# the paper's optimiser and gradient clipping (rdo.py: AdamW(betas=(.9, .98), amsgrad=True), clip 10)
_BETAS = (0.9, 0.98)
_CLIP_NORM = 10.0
# attack-config fields the trained basis depends on (budget and evaluation knobs left out)
_CFG_KEYS = ("seed", "extract_n", "score_n", "positions", "candidate_layers", "prune_layer_fraction",
             "kl_threshold", "kl_baseline", "kl_alpha", "induce_threshold", "steering_coeff", "refusal_tokens",
             "max_prompt_tokens", "implementation")


# ---------------------------------------------------------------------------- differentiable hooks


@contextmanager
def row_interventions(
    layout: Layout,
    ablate: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
    layer: int | None = None,
) -> Iterator[None]:
    """Per-row, *differentiable* interventions for the next forwards (the core hooks detach).

    ``ablate`` [B, D]: row b of the batch gets x ← x − (x·d_b)·d_b at every block input and at both
    write sites of every block (Arditi et al.'s three sites, as
    :func:`irr_ray.core.hooks.ablate_directions`); d_b must be a unit vector or zero (no ablation).
    ``add`` [B, D]: row b gets x ← x + a_b at the input of block ``layer`` (every position; zero rows
    change nothing). Gradients flow to ``ablate`` / ``add``.
    """
    if add is not None and layer is None:
        raise ValueError("row_interventions: `add` needs the block index `layer`")
    handles = []

    def cast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if t.shape[0] != x.shape[0] or t.shape[-1] != x.shape[-1]:
            raise ValueError(f"row_interventions: vectors {tuple(t.shape)} do not match activations {tuple(x.shape)}")
        return t.to(dtype=x.dtype, device=x.device).unsqueeze(1)  # [B, 1, D]

    def project(x: torch.Tensor) -> torch.Tensor:
        d = cast(ablate, x)
        return x - (x * d).sum(-1, keepdim=True) * d

    def pre(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        return hook

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return project(output)
        return (project(output[0]), *output[1:])

    try:
        if ablate is not None:
            for i in range(layout.num_layers):
                handles.append(layout.blocks[i].register_forward_pre_hook(pre(project), with_kwargs=True))
                handles.append(layout.attn_write(i).register_forward_hook(post))
                handles.append(layout.mlp_write(i).register_forward_hook(post))
        if add is not None:
            handles.append(layout.blocks[int(layer)].register_forward_pre_hook(  # type: ignore[arg-type]
                pre(lambda x: x + cast(add, x)), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def sample_cone(basis: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` unit directions of the cone spanned by the rows of ``basis`` [k, D] (the paper's
    ``hypersphere`` sampling): s = |z| / ‖z‖, z ~ N(0, I_k) drawn from ``generator`` (CPU), r = s·B / ‖s·B‖."""
    z = torch.randn(n, basis.shape[0], generator=generator).abs()
    s = (z / z.norm(dim=1, keepdim=True)).to(device=basis.device, dtype=basis.dtype)
    r = s @ basis
    return r / r.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------- the training problem


@dataclass
class _Problem:
    """What every cone dimension trains on: tokenised prompts, the original model's harmless
    log-probabilities, the addition layer ℓ⋆ and scale α, the initial direction."""

    harmful: EncodedPrompts  # training prompts, left-padded [N_h, T]
    harmless: EncodedPrompts  # [N_l, T]
    harmless_logp: torch.Tensor  # [N_l, V] float64 log-softmax of the unablated last-position logits
    layer: int
    alpha: float
    init: torch.Tensor  # [D] unit, float32
    dim: dict[str, Any]  # the difference-of-means choice (dim_layer, dim_position, dim_norm, its scores)


def _rows(enc: EncodedPrompts, idx: torch.Tensor) -> EncodedPrompts:
    """Rows ``idx`` of a left-padded batch, with the columns that are padding in every row dropped."""
    ids, mask = enc["input_ids"][idx], enc["attention_mask"][idx]
    start = int(torch.nonzero(mask.any(0))[0])
    return {"input_ids": ids[:, start:], "attention_mask": mask[:, start:]}


@torch.no_grad()
def _plain_logits(model: nn.Module, enc: EncodedPrompts, batch: int) -> torch.Tensor:
    """Unintervened last-position logits of every row of ``enc``, [N, V] float64, ``batch`` rows per forward."""
    n = enc["input_ids"].shape[0]
    out = []
    for i in range(0, n, batch):
        b = _rows(enc, torch.arange(i, min(i + batch, n)))
        out.append(last_position_logits(model, b["input_ids"], b["attention_mask"]).double())
    return torch.cat(out)


class _Batches:
    """Seeded minibatches of one prompt class: consecutive chunks of a permutation, reshuffled when
    fewer than ``size`` prompts are left (the paper's shuffled DataLoader with ``drop_last``)."""

    def __init__(self, n: int, size: int, generator: torch.Generator) -> None:
        self.n, self.size, self.g = n, min(size, n), generator
        self.order, self.pos = torch.randperm(n, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return idx


# ---------------------------------------------------------------------------- the attack


class RDOAttack(SuiteAttack):
    """Refusal direction optimisation and concept cones (module docstring); budget = cone dimension."""

    name: ClassVar[str] = "rdo"
    budget_axis: ClassVar[str] = "cone_dim"
    Settings: ClassVar[type] = RDOSettings

    def __init__(self, settings: RDOSettings) -> None:
        super().__init__(settings)
        self.settings: RDOSettings = settings
        self._bases: dict[int, torch.Tensor] = {}  # k -> [k, D] orthonormal, float32, CPU
        self._infos: dict[int, dict[str, Any]] = {}
        self._problem: _Problem | None = None
        self._key: str | None = None

    # ------------------------------------------------------------------ interface

    def step(self, ctx: AttackContext, budget: int) -> BudgetStep:
        """Ablate the span of the trained k-dimensional cone basis, k = ``budget`` (cones 1 … k are
        trained in order, each from the previous one, or reloaded from ``work_dir/rdo``).

        ``info`` (flat, JSON): on the scoring prompts ``refusal_score`` (mean refusal log-odds,
        harmful, span ablated), ``kl`` (mean KL(original ‖ ablated), harmless), ``induce_score``
        (mean over the rows of the log-odds with α·b_i added at ``layer``), for k ≥ 2
        ``cone_refusal_mean`` / ``cone_refusal_max`` over sampled cone directions; the training's
        ``loss`` (lowest), ``best_step``, ``steps_run``; ``alpha``, ``layer`` and the initial
        difference-of-means choice (``dim_*``); timings ``setup_s`` / ``optimise_s`` /
        ``evaluate_s``; ``resumed`` when reloaded."""
        self._key = self._key or self._settings_key(ctx)
        for k in range(1, budget + 1):
            if k not in self._bases:
                self._obtain(ctx, k)
        basis = self._bases[budget].to(ctx.device)
        return BudgetStep(intervention=lambda: ablate_directions(ctx.model, basis), info=dict(self._infos[budget]))

    def basis(self, k: int) -> torch.Tensor:
        """The trained (or reloaded) cone basis of dimension ``k``, [k, D] orthonormal rows, float32 CPU."""
        if k not in self._bases:
            raise KeyError(f"rdo: cone {k} has not been trained yet (trained: {sorted(self._bases)})")
        return self._bases[k].clone()

    def write_artifacts(self, out: Path) -> None:
        """``rdo_basis.safetensors``: the basis of the largest cone trained (rows orthonormal)."""
        if not self._bases:
            return
        k = max(self._bases)
        info = self._infos[k]
        save_directions(Path(out) / "rdo_basis.safetensors", self._bases[k],
                        {"kind": "rdo_cone_basis", "cone_dim": str(k), "layer": str(info["layer"]),
                         "alpha": repr(info["alpha"]), "info": json.dumps(info)})

    # ------------------------------------------------------------------ cache

    def _settings_key(self, ctx: AttackContext) -> str:
        settings = config_dict(self.settings)
        settings.pop("budgets")
        cfg = config_dict(ctx.cfg)
        model = ctx.model.config
        return stable_hash({"settings": settings, "seed": ctx.seed, "refusal_ids": sorted(ctx.refusal_ids),
                            "cfg": {k: cfg.get(k) for k in _CFG_KEYS},
                            "model": [getattr(model, "_name_or_path", ""), model.hidden_size,
                                      get_layout(ctx.model).num_layers]})

    @staticmethod
    def _path(ctx: AttackContext, k: int) -> Path:
        return ctx.work_dir / "rdo" / f"cone_{k}.safetensors"

    def _obtain(self, ctx: AttackContext, k: int) -> None:
        path = self._path(ctx, k)
        if path.is_file():
            try:
                basis, meta = load_directions(path)
            except IrrRayError as exc:
                log.warning("rdo: cannot read %s (%s); optimising cone %d again", path, exc, k)
            else:
                if meta.get("key") == self._key and basis.shape[0] == k:
                    self._bases[k] = basis.float()
                    self._infos[k] = {**json.loads(meta["info"]), "resumed": True}
                    log.info("rdo: cone %d reloaded from %s", k, path)
                    return
                log.info("rdo: %s is for other settings; optimising cone %d again", path, k)
        t0 = time.perf_counter()
        problem = self._problem = self._problem or self._setup(ctx)
        t1 = time.perf_counter()
        basis, train = self._optimise(ctx, problem, k, self._bases.get(k - 1))
        t2 = time.perf_counter()
        scores = self._evaluate(ctx, problem, basis)
        if k == 1 and self.settings.select == "score":
            basis, scores, train = self._select_single(ctx, problem, basis, scores, train)
        info = {"cone_dim": k, **scores, **train,
                "layer": problem.layer, "alpha": problem.alpha, **problem.dim,
                "setup_s": t1 - t0, "optimise_s": t2 - t1, "evaluate_s": time.perf_counter() - t2}
        self._bases[k], self._infos[k] = basis, info
        save_directions(path, basis, {"kind": "rdo_cone_basis", "key": str(self._key), "cone_dim": str(k),
                                      "info": json.dumps(info)})
        log.info("rdo: cone %d: refusal %.3f kl %.4f induce %.3f loss %.4f (%d steps, %.1fs)", k,
                 info["refusal_score"], info["kl"], info["induce_score"], info["loss"], info["steps_run"],
                 info["optimise_s"])

    # ------------------------------------------------------------------ setup: DIM init, data

    def _setup(self, ctx: AttackContext) -> _Problem:
        model, tok, cfg, s = ctx.model, ctx.tokenizer, ctx.cfg, self.settings
        device, n_layers = ctx.device, get_layout(ctx.model).num_layers
        extract_h = encode_batches(tok, ctx.prompts.extract.harmful, cfg.extract_batch_size, device,
                                   cfg.max_prompt_tokens)
        extract_l = encode_batches(tok, ctx.prompts.extract.harmless, cfg.extract_batch_size, device,
                                   cfg.max_prompt_tokens)
        layers, positions = cfg.candidate_layer_indices(n_layers), list(cfg.positions)
        with _frozen(model):
            candidates = mean_difference_candidates(model, extract_h, extract_l, layers, positions)
            if not candidates:
                raise IrrRayError("rdo: every difference of means is zero; nothing to initialise the direction from")
            scores = make_scorer(model, tok, ctx.prompts.score, ctx.refusal_ids, cfg).score(candidates, [])
            chosen = select_direction(scores, cfg)
            best, init = scores[chosen], candidates[chosen].vector.float()
            layer, alpha = best.layer, best.norm
            if s.layer is not None:
                if not 0 <= s.layer < n_layers:
                    raise IrrRayError(f"rdo: settings.layer {s.layer} out of range 0..{n_layers - 1}")
                at = mean_difference_candidates(model, extract_h, extract_l, [s.layer], [best.position])
                layer, alpha = s.layer, (at[0].norm if at else alpha)
            harmful = tokenize_chat(tok, ctx.prompts.extract.harmful, cfg.max_prompt_tokens, device)
            harmless = tokenize_chat(tok, ctx.prompts.extract.harmless, cfg.max_prompt_tokens, device)
            rho_h = refusal_log_odds(_plain_logits(model, harmful, cfg.extract_batch_size), ctx.refusal_ids)
            logits_l = _plain_logits(model, harmless, cfg.extract_batch_size)
            rho_l = refusal_log_odds(logits_l, ctx.refusal_ids)
        keep_h, keep_l = torch.arange(len(rho_h)), torch.arange(len(rho_l))
        if s.filter_prompts:
            fh, fl = torch.nonzero(rho_h.cpu() > 0).flatten(), torch.nonzero(rho_l.cpu() < 0).flatten()
            # a model that never refuses (a base model) leaves no harmful prompt: train on all of them
            keep_h = fh if len(fh) >= 2 else keep_h
            keep_l = fl if len(fl) >= 2 else keep_l
        dim = {"dim_layer": best.layer, "dim_position": best.position, "dim_norm": best.norm,
               "dim_refusal_score": best.refusal_score, "dim_kl": best.kl, "dim_induce_score": best.induce_score}
        log.info("rdo: init from the difference of means at layer %d pos %d (norm %.3g); add at layer %d, α %.3g; "
                 "training on %d harmful / %d harmless prompts", best.layer, best.position, best.norm, layer, alpha,
                 len(keep_h), len(keep_l))
        return _Problem(
            harmful=_rows(harmful, keep_h.to(device)), harmless=_rows(harmless, keep_l.to(device)),
            harmless_logp=torch.log_softmax(logits_l[keep_l.to(logits_l.device)], dim=-1),
            layer=int(layer), alpha=float(alpha), init=(init / init.norm()).cpu(), dim=dim)

    # ------------------------------------------------------------------ optimisation

    def _loss(self, model: nn.Module, layout: Layout, refusal_ids: Sequence[int], problem: _Problem,
              dirs: torch.Tensor, weights: torch.Tensor, idx_h: torch.Tensor, idx_l: torch.Tensor) -> float:
        """Weighted loss Σ_g w_g L(dirs_g) on one minibatch (module docstring); backpropagates each
        term (one forward per term, every direction's rows batched) and returns its value."""
        s = self.settings
        g = dirs.shape[0]
        total = 0.0
        # each term backpropagates into a leaf copy of the directions (one model graph alive at a
        # time); the directions' own graph (normalisation, cone samples) is backpropagated once at the end
        leaf = dirs.detach().requires_grad_(True)
        dirs, graph = leaf, dirs
        harmful, harmless = _rows(problem.harmful, idx_h), _rows(problem.harmless, idx_l)

        def forward(enc: EncodedPrompts, **hooks: Any) -> torch.Tensor:
            ids, mask = enc["input_ids"].repeat(g, 1), enc["attention_mask"].repeat(g, 1)
            with row_interventions(layout, **hooks):
                return last_position_logits(model, ids, mask)  # [g·n, V]

        n_h, n_l = len(idx_h), len(idx_l)
        if s.ablation_weight > 0:
            rho = refusal_log_odds(forward(harmful, ablate=dirs.repeat_interleave(n_h, 0)), refusal_ids)
            term = (nn.functional.softplus(rho).view(g, n_h).mean(1) * weights).sum() * s.ablation_weight
            term.backward()
            total += float(term.detach())
        if s.addition_weight > 0:
            add = (problem.alpha * dirs).repeat_interleave(n_l, 0)
            rho = refusal_log_odds(forward(harmless, add=add, layer=problem.layer), refusal_ids)
            term = (nn.functional.softplus(-rho).view(g, n_l).mean(1) * weights).sum() * s.addition_weight
            term.backward()
            total += float(term.detach())
        if s.retain_weight > 0:
            logp = torch.log_softmax(forward(harmless, ablate=dirs.repeat_interleave(n_l, 0)).double(), dim=-1)
            base = problem.harmless_logp[idx_l].repeat(g, 1)
            kl = (logp.exp() * (logp - base)).sum(-1)  # KL(p_ablated ‖ p_original), the paper's orientation
            term = (kl.view(g, n_l).mean(1) * weights).sum() * s.retain_weight
            term.backward()
            total += float(term.detach())
        if leaf.grad is not None:
            graph.backward(leaf.grad)
        return total

    def _optimise(self, ctx: AttackContext, problem: _Problem, k: int,
                  previous: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Train the k-row cone basis (module docstring) → (basis [k, D] float32 CPU, training facts)."""
        s, model, device = self.settings, ctx.model, ctx.device
        layout = get_layout(model)
        gen = torch.Generator().manual_seed(int(ctx.seed) * 1009 + 7919 * k)
        width = problem.init.shape[0]
        if k == 1:
            start = problem.init[None]
        else:
            if previous is None or previous.shape[0] != k - 1:
                raise RuntimeError(f"rdo: cone {k} needs the trained cone {k - 1}")
            start = torch.cat([previous.float(), torch.randn(1, width, generator=gen)])
        basis = nn.Parameter(orthonormalize(start.float()).to(device))
        opt = torch.optim.AdamW([basis], lr=s.lr, betas=_BETAS, weight_decay=0.0, amsgrad=True)
        n_samples = s.cone_samples if k > 1 else 0
        weights = torch.tensor([1.0 / k] * k + [1.0 / max(n_samples, 1)] * n_samples, device=device)
        batches_h = _Batches(problem.harmful["input_ids"].shape[0], s.batch_size, gen)
        batches_l = _Batches(problem.harmless["input_ids"].shape[0], s.batch_size, gen)
        best_loss, best_basis, best_step = math.inf, basis.detach().clone(), 0
        patience, reductions, steps_run, losses = 0, 0, 0, []
        with _frozen(model):
            for step in range(s.steps):
                idx_h, idx_l = batches_h.next().to(device), batches_l.next().to(device)
                unit = basis / basis.norm(dim=1, keepdim=True)
                dirs = torch.cat([unit, sample_cone(unit, n_samples, gen)]) if n_samples else unit
                opt.zero_grad(set_to_none=True)
                loss = self._loss(model, layout, ctx.refusal_ids, problem, dirs, weights, idx_h, idx_l)
                losses.append(loss)
                steps_run = step + 1
                if loss < best_loss:  # the paper keeps the iterate with the lowest training loss …
                    best_loss, best_basis, best_step, patience = loss, basis.detach().clone(), step, 0
                else:  # … and divides the lr by 10 after `patience` steps without a new lowest loss
                    patience += 1
                with torch.no_grad():
                    grad, u = basis.grad, basis.detach() / basis.detach().norm(dim=1, keepdim=True)
                    grad.sub_((grad * u).sum(1, keepdim=True) * u)  # tangent space of each unit row
                torch.nn.utils.clip_grad_norm_([basis], _CLIP_NORM)
                opt.step()
                with torch.no_grad():
                    basis.copy_(orthonormalize(basis.detach()))
                if patience >= s.patience:
                    if reductions >= s.n_lr_reduce:
                        break
                    reductions, patience = reductions + 1, 0
                    for group in opt.param_groups:
                        group["lr"] /= 10
        out = orthonormalize(best_basis.detach().double()).float().cpu()
        facts = {"loss": best_loss, "best_step": best_step, "steps_run": steps_run,
                 "first_loss": losses[0], "last_loss": losses[-1]}
        if k == 1:
            facts["cosine_to_dim"] = float(out[0] @ problem.init)
        return out, facts

    def _select_single(self, ctx: AttackContext, problem: _Problem, trained: torch.Tensor, scores: dict[str, Any],
                       train: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
        """``select = "score"`` (module docstring): the trained direction or the difference-of-means
        start, whichever refuses less on the scoring prompts with KL ≤ max(kl_threshold, start's KL)."""
        start = problem.init[None].clone()
        start_scores = self._evaluate(ctx, problem, start)
        bound = max(float(ctx.cfg.kl_threshold), float(start_scores["kl"]))
        keep_trained = scores["kl"] <= bound and scores["refusal_score"] <= start_scores["refusal_score"]
        facts = {**train, "selected": "trained" if keep_trained else "dim_start",
                 "trained_refusal_score": scores["refusal_score"], "trained_kl": scores["kl"],
                 "start_refusal_score": start_scores["refusal_score"], "start_kl": start_scores["kl"]}
        if keep_trained:
            return trained, scores, facts
        facts["cosine_to_dim"] = 1.0
        return start, start_scores, facts

    # ------------------------------------------------------------------ scores on the SCORE prompts

    @torch.no_grad()
    def _evaluate(self, ctx: AttackContext, problem: _Problem, basis: torch.Tensor) -> dict[str, Any]:
        """Scores of the trained basis on the scoring prompts (train split): refusal log-odds on
        harmful prompts and KL(p_original ‖ p_ablated) on harmless ones with span(B) ablated; the
        induce log-odds with α·b_i added at ℓ⋆ (mean over the rows); for k ≥ 2 the mean / max
        refusal log-odds over ``cone_samples`` fixed cone directions, each ablated alone."""
        model, cfg = ctx.model, ctx.cfg
        device, layout = ctx.device, get_layout(ctx.model)
        harmful, harmless = (encode_batches(ctx.tokenizer, prompts, cfg.extract_batch_size, device,
                                            cfg.max_prompt_tokens)
                             for prompts in (ctx.prompts.score.harmful, ctx.prompts.score.harmless))
        b = basis.to(device)

        def per_direction(batches: list[EncodedPrompts], dirs: torch.Tensor, how: str) -> torch.Tensor:
            """Mean refusal log-odds per direction [G], all directions of a batch in one forward."""
            g, rho = dirs.shape[0], []
            for batch in batches:
                n = batch["input_ids"].shape[0]
                rows = dirs.repeat_interleave(n, 0)
                hooks = {"ablate": rows} if how == "ablate" else {"add": problem.alpha * rows, "layer": problem.layer}
                with row_interventions(layout, **hooks):
                    logits = last_position_logits(model, batch["input_ids"].repeat(g, 1),
                                                  batch["attention_mask"].repeat(g, 1))
                rho.append(refusal_log_odds(logits, ctx.refusal_ids).view(g, n))
            return torch.cat(rho, dim=1).mean(1)

        with _frozen(model):
            out: dict[str, Any] = {
                "refusal_score": refusal_score(model, harmful, ctx.refusal_ids, b),
                "kl": harmless_kl(model, harmless, b),
                "induce_score": float(per_direction(harmless, b, "add").mean()),
            }
            if b.shape[0] > 1:
                gen = torch.Generator().manual_seed(int(ctx.seed) + 104729)
                rho = per_direction(harmful, sample_cone(b, self.settings.cone_samples, gen), "ablate")
                out["cone_refusal_mean"], out["cone_refusal_max"] = float(rho.mean()), float(rho.max())
        return out


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the previous state restored after."""
    training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)
