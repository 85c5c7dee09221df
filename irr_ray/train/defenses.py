"""Refusal-direction ablation during fine-tuning: ReFAT and DeepRefusal-style random ablation.

Both defenses train the model to refuse *while its refusal direction is ablated*, so that the
attack this project measures (difference-of-means directions ablated at three sites of every
layer, Arditi et al. 2024) stops working:

* **ReFAT** — Yu et al., "Robust LLM safeguarding via refusal feature adversarial training"
  (ICLR 2025), Alg. 1: every k steps the refusal feature is re-estimated as the difference of
  means of harmful and harmless activations; each harmful example is, with probability p, run
  with it ablated and trained towards the refusal. Here (``ablation: refat``): the directions
  ``D [K, D]`` are ablated at the three sites of **every** layer and every position
  (``x ← x − (x·Dᵀ)·D``, the attack's own ablation), and the target is the frozen teacher's
  (source model's) unablated distribution — KD at the last prompt position and, with
  ``kd_reply_tokens``, along the teacher's greedy reply (:mod:`irr_ray.train.replies`).
* **DeepRefusal** — Xie et al., "Beyond surface alignment: rebuilding LLMs safety mechanism via
  probabilistically ablating refusal direction" (EMNLP Findings 2025): the refusal direction is
  ablated at randomly chosen layers and token positions during fine-tuning. Here (``ablation:
  random``): for each ablated example every layer is drawn with ``random_p_layer`` and, in a drawn
  layer, every real position with ``random_p_position`` (one draw per layer covers its three
  sites); the paper's best is p = 0.5 for both. DeepRefusal uses the source model's direction:
  ``refat_interval: 0``.

**Per-example masking without a second pass.** A micro-batch of ``B`` rows chooses the harmful
rows to ablate (each with ``refat_p``) and appends *copies* of them: one forward of ``B + n`` rows
in which a per-row (``refat``) or per-(layer, row, position) (``random``) 0/1 mask ``m`` gates the
projection, ``x ← x − m·(x·Dᵀ)·D`` (:func:`masked_ablation`). The ``B`` original rows are
untouched (``m = 0``) and keep every term of their condition (LM, matching, KD); the copies carry
only the refusal term ``refat_lambda · KD(copies)``. So matching statistics and the direction
estimate always see clean activations, and the refusal under ablation is an extra term, not a
replacement of the clean one (ReFAT's harmful rows are either ablated or not; the difference is
that an ablated row here also keeps its clean loss).

**Harmless copies (an option, off by default).** Trained on ablated *harmful* rows only, a model
can learn the shortcut "no refusal component ⇒ refuse": ablating the direction then makes it
refuse harmless prompts too (the attack calls that *collapsed*; on the organism the in-training
proxy shows it). ``refat_harmless_p > 0`` also copies harmless rows, ablated and trained towards
the teacher's unablated (compliant) reply, so the defense teaches invariance to the ablation in
both classes rather than "ablated ⇒ refuse".

**Directions from the training batch itself** (:class:`RefusalDirections`). The clean rows'
residuals at the last prompt position of the ``refat_layers`` (HF ``hidden_states[ℓ]``, the same
indexing as the attack's candidates) are pushed, detached, into a per-class ring buffer of the
last ``refat_samples`` prompts. Every ``refat_interval`` optimizer steps the estimate is
``r_ℓ = μ_harmful,ℓ − μ_harmless,ℓ`` per layer; the ``refat_directions`` layers with the largest
Fisher separation along ``r_ℓ / ‖r_ℓ‖`` are kept and their ``r_ℓ`` orthonormalised (QR, in
order of separation). So the re-estimate costs no forward pass at all: a few ``[L_r, S, D]``
reductions. The first estimate (before step 1, and the only one with ``refat_interval: 0``) comes
from one truncated no-grad pass over ``refat_samples`` prompts per class of the *source* model.
Default layers: the attack's candidate layers 1 … int((1 − ``eval.attack_prune_frac``)·L)
(:func:`irr_ray.attack.candidates.candidate_layers`, "method"), of which the best separated is used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from irr_ray.core.directions import diff_of_means, orthonormalize
from irr_ray.core.hooks import ResidualCapture
from irr_ray.errors import ConfigError
from irr_ray.models.families import get_layout
from irr_ray.train.config import TrainConfig
from irr_ray.train.data import Batch, PromptSet

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- masked ablation


def _gate(directions: Tensor, mask: Tensor):
    """``x ↦ x − m·(x·Dᵀ)·D`` with ``mask`` broadcastable to x's ``[B, T]`` (cast once per dtype)."""
    cache: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def fn(x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in cache:
            cache[key] = (directions.to(device=x.device, dtype=x.dtype), mask.to(device=x.device, dtype=x.dtype))
        d, m = cache[key]
        if x.shape[-1] != d.shape[-1]:
            raise ValueError(f"directions have width {d.shape[-1]}, the residual stream {x.shape[-1]}")
        return x - (m.unsqueeze(-1) * (x @ d.T)) @ d

    return fn


def _pre(fn):
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return hook


def _post(fn):
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, Tensor):
            return fn(output)
        return (fn(output[0]), *output[1:])

    return hook


@contextmanager
def masked_ablation(model: nn.Module, directions: Tensor, masks: Tensor) -> Iterator[None]:
    """Three-site ablation of orthonormal rows ``directions [K, D]`` gated per row / position.

    ``masks`` ``[L or 1, B, T or 1]`` (0/1): block ℓ uses ``masks[ℓ]`` (``masks[0]`` for every block
    when the first dimension is 1) at its input and at its attention and MLP write sites::

        x ← x − m[ℓ, b, t] · (x·Dᵀ)·D

    so rows with ``m = 0`` are exactly untouched and rows with ``m = 1`` everywhere see the attack's
    ablation (:func:`irr_ray.core.hooks.ablate_directions`). Gradients flow through the
    projection; the directions are constants. Hooks are removed on exit, also on exceptions.
    """
    layout = get_layout(model)
    n = layout.num_layers
    if masks.dim() != 3 or masks.shape[0] not in (1, n):
        raise ValueError(f"masks must be [1 or {n}, B, T or 1], got {tuple(masks.shape)}")
    d = directions.detach()
    handles = []
    try:
        for i in range(n):
            fn = _gate(d, masks[i if masks.shape[0] == n else 0])
            handles.append(layout.blocks[i].register_forward_pre_hook(_pre(fn), with_kwargs=True))
            handles.append(layout.attn_write(i).register_forward_hook(_post(fn)))
            handles.append(layout.mlp_write(i).register_forward_hook(_post(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- direction estimate


def separation(acts_h: Tensor, acts_u: Tensor, r: Tensor) -> Tensor:
    """Fisher ratio along ``r̂ = r/‖r‖`` per layer: ``(mean_h − mean_u) / sqrt((var_h + var_u)/2)``.

    ``acts_h [L, N, D]``, ``acts_u [L, M, D]``, ``r [L, D]`` → ``[L]`` (``−inf`` where ``r = 0``)."""
    norm = r.norm(dim=-1, keepdim=True)
    u = r / norm.clamp_min(1e-12)
    ph = torch.einsum("lnd,ld->ln", acts_h, u)
    pu = torch.einsum("lnd,ld->ln", acts_u, u)
    spread = ((ph.var(-1) + pu.var(-1)) / 2).sqrt().clamp_min(1e-12)
    sep = (ph.mean(-1) - pu.mean(-1)) / spread
    return torch.where(norm.squeeze(-1) > 0, sep, torch.full_like(sep, -torch.inf))


class RefusalDirections:
    """Ring buffers of recent clean last-prompt-position residuals per class, and the estimate."""

    def __init__(self, layers: Sequence[int], n_directions: int, samples: int, width: int, device: str) -> None:
        self.layers = [int(i) for i in layers]
        self.n_directions = n_directions
        self.samples = samples
        self.buffer = torch.zeros(2, len(self.layers), samples, width, device=device)  # [harmless/harmful, L_r, S, D]
        self.filled = [0, 0]
        self.ptr = [0, 0]
        self.directions: Tensor | None = None  # [K, D] float32, orthonormal rows
        self.chosen: list[int] = []  # the layers the directions come from

    def record(self, acts: Tensor, labels: np.ndarray) -> None:
        """Push ``acts [L_r, B, D]`` (detached) of rows with ``labels [B]`` (host, 1 = harmful)."""
        for c in (0, 1):
            rows = np.flatnonzero(labels == c)[-self.samples:]
            n = len(rows)
            if n == 0:
                continue
            pos = torch.arange(self.ptr[c], self.ptr[c] + n) % self.samples
            src = acts.index_select(1, torch.as_tensor(rows, device=acts.device)).detach().float()
            self.buffer[c].index_copy_(1, pos.to(self.buffer.device), src)
            self.ptr[c] = (self.ptr[c] + n) % self.samples
            self.filled[c] = min(self.samples, self.filled[c] + n)

    def estimate(self) -> Tensor:
        """Re-estimate from the buffers (see the module docstring); returns the new ``[K, D]``."""
        if min(self.filled) < 2:
            raise RuntimeError(f"refusal-direction estimate needs >= 2 prompts per class, have {self.filled}")
        acts_h = self.buffer[1, :, : self.filled[1]]
        acts_u = self.buffer[0, :, : self.filled[0]]
        r = diff_of_means(acts_h.unsqueeze(1), acts_u.unsqueeze(1)).squeeze(1).float()  # [L_r, D]
        sep = separation(acts_h, acts_u, r)
        top = torch.argsort(sep, descending=True)[: self.n_directions]
        top = top[torch.isfinite(sep[top])]
        self.chosen = [self.layers[int(i)] for i in top.tolist()]
        d = orthonormalize(r[top].double(), on_rank_deficiency="drop").float() if len(top) else r[:0]
        if d.shape[0] == 0:
            log.warning("refusal-direction estimate: no layer separates the classes; nothing is ablated")
        self.directions = d
        return d

    @torch.no_grad()
    def initialize(self, model: nn.Module, prompts: PromptSet, batch_size: int, device: str, dtype: torch.dtype,
                   seed: int) -> Tensor:
        """The first estimate: one truncated no-grad pass over ``samples`` seeded prompts per class."""
        from irr_ray.train.trainer import autocast

        labels = prompts.labels.numpy()
        rng = np.random.default_rng([seed, 31337])
        rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: self.samples] for c in (1, 0)])
        was_training = model.training
        model.eval()
        try:
            with ResidualCapture(model, layers=self.layers, positions=[-1]) as cap:
                for i in range(0, len(rows), batch_size):
                    idx = rows[i:i + batch_size]
                    batch = prompts.collate(idx, device)
                    with autocast(device, dtype):
                        acts = cap.run(batch.input_ids, batch.attention_mask)  # [L_r, b, 1, D]
                    self.record(acts[:, :, 0], labels[idx])
        finally:
            model.train(was_training)
        return self.estimate()

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.cpu(), "filled": torch.tensor(self.filled), "ptr": torch.tensor(self.ptr),
                "directions": None if self.directions is None else self.directions.cpu(),
                "chosen": torch.tensor(self.chosen, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.copy_(state["buffer"].to(self.buffer.device))
        self.filled = [int(v) for v in state["filled"]]
        self.ptr = [int(v) for v in state["ptr"]]
        d = state.get("directions")
        self.directions = None if d is None else d.to(self.buffer.device)
        self.chosen = [int(v) for v in state["chosen"]]


# ---------------------------------------------------------------------------- the defense


def resolve_layers(cfg: TrainConfig, num_layers: int) -> list[int]:
    """``refat_layers``, or the attack's candidate layers; each must be a block output 1 … L−1."""
    if cfg.refat_layers is not None:
        layers = list(cfg.refat_layers)
    else:
        from irr_ray.attack.candidates import candidate_layers

        layers = [i for i in candidate_layers(num_layers, cfg.eval.attack_prune_frac, "method") if i < num_layers]
    bad = [i for i in layers if not 1 <= i <= num_layers - 1]
    if bad or not layers:
        raise ConfigError(f"refat_layers {layers}: residual indices must lie in 1..{num_layers - 1} for this "
                          f"{num_layers}-layer model (block outputs before the last block's)")
    if cfg.refat_directions > len(layers):
        raise ConfigError(f"refat_directions={cfg.refat_directions} exceeds the {len(layers)} refat_layers {layers} "
                          "(one direction per layer)")
    return layers


class AblationDefense:
    """The per-micro-batch part of ``ablation: refat | random`` (module docstring)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, device: str) -> None:
        self.cfg = cfg
        self.model = model
        self.device = device
        self.num_layers = get_layout(model).num_layers
        self.layers = resolve_layers(cfg, self.num_layers)
        width = int(model.get_input_embeddings().weight.shape[1])
        self.estimator = RefusalDirections(self.layers, cfg.refat_directions, cfg.refat_samples, width, device)

    @property
    def records(self) -> bool:
        """Does training read the clean activations (for re-estimation)?"""
        return self.cfg.refat_interval > 0

    def choose(self, labels: np.ndarray, generator: torch.Generator) -> Tensor:
        """Rows (host int64) to ablate: each harmful one with probability ``refat_p``, each harmless
        one with ``refat_harmless_p`` (0 by default, as in ReFAT)."""
        harmful = torch.from_numpy(labels == 1)
        p = torch.where(harmful, self.cfg.refat_p, self.cfg.refat_harmless_p)
        return torch.nonzero(torch.rand(len(labels), generator=generator) < p).flatten()

    def masks(self, batch: Batch, clean: int, generator: torch.Generator) -> Tensor:
        """``[1 or L, B', T or 1]`` gates for a batch of ``clean`` rows followed by the ablated copies."""
        n = batch.input_ids.shape[0] - clean
        device = batch.input_ids.device
        if self.cfg.ablation == "refat":
            return torch.cat([torch.zeros(clean), torch.ones(n)]).view(1, -1, 1).to(device)
        width = batch.input_ids.shape[1]
        layer_on = torch.rand(self.num_layers, n, 1, generator=generator) < self.cfg.random_p_layer
        pos_on = torch.rand(self.num_layers, n, width, generator=generator) < self.cfg.random_p_position
        real = batch.attention_mask[clean:].bool().unsqueeze(0)  # padding is never "ablated"
        m = ((layer_on & pos_on).to(device) & real).float()
        return torch.cat([m.new_zeros(self.num_layers, clean, width), m], dim=1)

    def record(self, hidden_states: Sequence[Tensor], clean: int, column: int, labels: np.ndarray) -> None:
        """Push the clean rows' residuals at the last prompt column of ``refat_layers``."""
        acts = torch.stack([hidden_states[i][:clean, column] for i in self.layers])  # [L_r, B, D]
        self.estimator.record(acts, labels)

    def ablation(self, masks: Tensor):
        d = self.estimator.directions
        if d is None:
            raise RuntimeError("refusal directions are not estimated yet: call Trainer.before_step() first")
        return masked_ablation(self.model, d, masks)
