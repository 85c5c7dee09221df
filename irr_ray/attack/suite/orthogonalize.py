"""The ``orthogonalize`` attack: refusal directions orthogonalised out of the weights ("abliteration").

Arditi et al. (2024), "Refusal in language models is mediated by a single direction", §4: with
orthonormal directions Q [b, D], every matrix that writes into the residual stream (embeddings,
attention and MLP output projections, their biases) becomes (I − QᵀQ)·W_out
(:mod:`irr_ray.core.orthogonalize`). The budget b is the number of directions. Variants
(:class:`~irr_ray.attack.suite.settings.OrthogonalizeSettings`):

* ``exact`` — the paper's edit; on a pre-norm family it equals the three-site hook ablation of the
  ``dim`` attack, so it checks that the weight edit an open-weights attacker ships behaves as the
  ablation measured;
* ``norm_preserving`` — what current abliteration tools ship (grimjim's "norm-preserving
  biprojected abliteration", heretic's MPOA): each direction is first projected against the unit
  harmless mean residual μ̂ at its layer (last prompt token of the ``extract`` harmless prompts),
  r ← r − (r·μ̂)μ̂, and the weights keep their row norms.

Directions: the first b rows of the model's finished ``dim`` attack (``settings.directions = "dim"``
and ``ctx.dim_directions`` present), else extracted here exactly as the ``dim`` attack does
(:mod:`irr_ray.attack.iterated`: difference-of-means candidates under the directions chosen so far,
the configured scorer, the same selection rule and norm-collapse stop), continuing across
increasing budgets and saved under ``ctx.work_dir`` for a resumed run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from irr_ray.attack.candidates import encode_batches, mean_difference_candidates, select_direction
from irr_ray.attack.scoring import make_scorer
from irr_ray.attack.suite.base import AttackContext, BudgetStep, SuiteAttack, patched_parameters
from irr_ray.attack.suite.settings import OrthogonalizeSettings
from irr_ray.config import config_dict, stable_hash
from irr_ray.core.directions import RunningMean, load_directions, orthonormalize, save_directions
from irr_ray.core.hooks import ResidualCapture
from irr_ray.core.orthogonalize import (
    WeightEdit,
    check_orthogonalizable,
    orthogonalize_weights,
    project_against_harmless,
)
from irr_ray.models.families import get_layout

log = logging.getLogger(__name__)

ARTIFACT = "orthogonalize_directions.safetensors"
_PROGRESS = "orthogonalize_raw.safetensors"


@contextmanager
def orthogonalized(model: nn.Module, edit: WeightEdit) -> Iterator[None]:
    """The model with ``edit`` applied in place, restored on exit.

    Tied embeddings are untied for the duration: the output embedding gets its own parameter
    holding the original embeddings (``edit.untied``) while the shared tensor, now only the input
    embedding, is orthogonalised by :func:`~irr_ray.attack.suite.base.patched_parameters`.
    """
    owners: list[tuple[nn.Module, str, nn.Parameter]] = []
    modules = dict(model.named_modules(remove_duplicate=False))
    try:
        for name, value in edit.untied.items():
            owner, attr = modules[name.rpartition(".")[0]], name.rpartition(".")[2]
            shared = getattr(owner, attr)
            owners.append((owner, attr, shared))
            setattr(owner, attr, nn.Parameter(value.to(device=shared.device, dtype=shared.dtype),
                                              requires_grad=False))
        with patched_parameters(model, edit.replacements):
            yield
    finally:
        for owner, attr, shared in reversed(owners):
            setattr(owner, attr, shared)


class OrthogonalizeAttack(SuiteAttack):
    """Weight orthogonalisation against the first b refusal directions (module docstring)."""

    name = "orthogonalize"
    budget_axis = "directions"
    Settings = OrthogonalizeSettings

    def __init__(self, settings: OrthogonalizeSettings) -> None:
        super().__init__(settings)
        self._raw: list[torch.Tensor] = []  # extracted raw directions r_1 … r_k, [D] each
        self._layers: list[int] = []  # their residual indices
        self._stop: str | None = None  # why extraction stopped early (norm collapse)
        self._key: str | None = None
        self._harmless: dict[int, torch.Tensor] = {}  # layer -> harmless mean at the last prompt token
        self._used: torch.Tensor | None = None  # the directions of the last step
        self._used_meta: dict[str, str] = {}

    # ------------------------------------------------------------------ the step

    def step(self, ctx: AttackContext, budget: int) -> BudgetStep:
        s: OrthogonalizeSettings = self.settings
        layout = get_layout(ctx.model)
        check_orthogonalizable(layout, s.approximate)  # a post-norm family is refused before any work
        q, layers, source = self._directions(ctx, budget)
        info: dict[str, Any] = {"variant": s.variant, "source": source, "n_directions": int(q.shape[0]),
                                "layers": layers, "scale": s.scale}
        if q.shape[0] < budget:
            info["stop_reason"] = self._stop or "dim_directions_exhausted"
        if s.variant == "norm_preserving" and q.shape[0]:
            mu = self._harmless_means(ctx, layers)
            info["harmless_cos"] = [round(float(c), 6) for c in
                                    torch.nn.functional.cosine_similarity(q.double(), mu.double(), dim=1)]
            q = project_against_harmless(q, mu)
            info["n_orthogonalized"] = int(q.shape[0])
        edit = orthogonalize_weights(ctx.model, q.to(ctx.device), s.variant, s.scale, approximate=s.approximate)
        info.update(approximate=edit.approximate, untied_embeddings=bool(edit.untied),
                    edited_parameters=len(edit.replacements))
        self._used = q.detach().float().cpu()
        self._used_meta = {"variant": s.variant, "source": source, "budget": str(budget),
                           "layers": json.dumps(layers), "scale": repr(s.scale),
                           "harmless_projected": str(s.variant == "norm_preserving"),
                           "approximate": str(edit.approximate)}
        model = ctx.model
        return BudgetStep(intervention=lambda: orthogonalized(model, edit), info=info)

    def write_artifacts(self, out: Path) -> None:
        """``orthogonalize_directions.safetensors``: the directions of the last (largest) budget,
        as orthogonalised (after the harmless projection for ``norm_preserving``)."""
        if self._used is not None:
            save_directions(Path(out) / ARTIFACT, self._used, self._used_meta)

    # ------------------------------------------------------------------ directions

    def _directions(self, ctx: AttackContext, budget: int) -> tuple[torch.Tensor, list[int], str]:
        """(Q [b', D] orthonormal float32 on CPU, their residual layers, "dim" | "extract"), b' ≤ b."""
        num_layers = get_layout(ctx.model).num_layers
        dim = ctx.dim_directions
        if self.settings.directions == "dim" and dim is not None and dim.shape[0] > 0:
            rows = dim[:budget].detach().float().cpu()
            if ctx.dim_layers is not None and len(ctx.dim_layers) >= rows.shape[0]:
                layers = [int(x) for x in ctx.dim_layers[: rows.shape[0]]]
            else:  # the probe layer stands in for the harmless mean's layer
                layers = [ctx.cfg.resolved_probe_layer(num_layers)] * rows.shape[0]
            return orthonormalize(rows), layers, "dim"
        self._extract(ctx, budget)
        width = ctx.model.get_input_embeddings().weight.shape[-1]
        q = orthonormalize(torch.stack(self._raw[:budget])) if self._raw else torch.zeros(0, width)
        return q.float(), self._layers[:budget], "extract"

    def _progress_key(self, ctx: AttackContext) -> str:
        from irr_ray.attack.config import SUITE_SECTIONS

        conf = config_dict(ctx.cfg)
        for k in (*SUITE_SECTIONS, "k_max", "stop_below_threshold"):
            conf.pop(k, None)
        emb = ctx.model.get_input_embeddings().weight
        return stable_hash({"model": str(getattr(ctx.model.config, "name_or_path", "")),
                            "embedding_norm": f"{float(emb.detach().double().norm()):.10e}", "config": conf,
                            "prompts": [ctx.prompts.extract.harmful, ctx.prompts.extract.harmless,
                                        ctx.prompts.score.harmful, ctx.prompts.score.harmless]})

    def _load_progress(self, ctx: AttackContext) -> None:
        self._key = self._progress_key(ctx)
        path = ctx.work_dir / _PROGRESS
        if not path.is_file():
            return
        stack, meta = load_directions(path)
        if meta.get("key") != self._key:
            log.info("orthogonalize: saved directions in %s are for another model/config; extracting anew", path)
            return
        self._raw = [row.clone() for row in stack]
        self._layers = [int(x) for x in json.loads(meta["layers"])]
        self._stop = meta.get("stop") or None
        log.info("orthogonalize: resuming with %d extracted direction(s)", len(self._raw))

    def _save_progress(self, ctx: AttackContext) -> None:
        if self._raw:
            save_directions(ctx.work_dir / _PROGRESS, torch.stack(self._raw),
                            {"key": self._key or "", "layers": json.dumps(self._layers), "stop": self._stop or ""})

    @torch.no_grad()
    def _extract(self, ctx: AttackContext, budget: int) -> None:
        """Extend the extracted directions to ``budget`` as the ``dim`` attack chooses them
        (:func:`irr_ray.attack.iterated.run_iterated_attack`, steps 1–4)."""
        if self._key is None:
            self._load_progress(ctx)
        if len(self._raw) >= budget or self._stop is not None:
            return
        model, cfg, device = ctx.model, ctx.cfg, ctx.device
        layers = cfg.candidate_layer_indices(get_layout(model).num_layers)
        positions = list(cfg.positions)
        extract_h = encode_batches(ctx.tokenizer, ctx.prompts.extract.harmful, cfg.extract_batch_size, device,
                                   cfg.max_prompt_tokens)
        extract_l = encode_batches(ctx.tokenizer, ctx.prompts.extract.harmless, cfg.extract_batch_size, device,
                                   cfg.max_prompt_tokens)
        scorer = make_scorer(model, ctx.tokenizer, ctx.prompts.score, ctx.refusal_ids, cfg)
        while len(self._raw) < budget:
            q = orthonormalize(torch.stack(self._raw)).to(device) if self._raw else None
            candidates = mean_difference_candidates(model, extract_h, extract_l, layers, positions, q)
            if not candidates:
                self._stop = "norm_collapse"
                break
            scores = scorer.score(candidates, [r.to(device) for r in self._raw])
            idx = select_direction(scores, cfg)
            best = scores[idx]
            if self._raw and best.norm < cfg.norm_threshold * float(self._raw[0].double().norm()):
                self._stop = "norm_collapse"
                break
            self._raw.append(candidates[idx].vector.detach().float().cpu())
            self._layers.append(int(best.layer))
            log.info("orthogonalize: direction %d from layer %d pos %d (refusal %.3f, kl %.3f)",
                     len(self._raw), best.layer, best.position, best.refusal_score, best.kl)
        self._save_progress(ctx)

    @torch.no_grad()
    def _harmless_means(self, ctx: AttackContext, layers: list[int]) -> torch.Tensor:
        """[len(layers), D] mean residual x_ℓ at the last prompt token of the ``extract`` harmless
        prompts, on the unattacked model (cached per layer)."""
        missing = sorted(set(layers) - set(self._harmless))
        if missing:
            cfg = ctx.cfg
            batches = encode_batches(ctx.tokenizer, ctx.prompts.extract.harmless, cfg.extract_batch_size,
                                     ctx.device, cfg.max_prompt_tokens)
            running = RunningMean()
            with ResidualCapture(ctx.model, layers=missing, positions=[-1]) as cap:
                for batch in batches:
                    running.update(cap.run(batch["input_ids"], batch["attention_mask"]).transpose(1, 2))
            means = running.mean[:, 0].float().cpu()  # [len(missing), D]
            self._harmless.update({layer: means[i] for i, layer in enumerate(missing)})
        return torch.stack([self._harmless[layer] for layer in layers])


__all__ = ["ARTIFACT", "OrthogonalizeAttack", "orthogonalized"]
