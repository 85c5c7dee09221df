"""First-order (attribution-patching) estimate of what ablating a direction does to a score.

Attribution patching (Nanda 2023, "Attribution patching: activation patching at industrial
scale"; Syed, Rager & Conmy 2023, "Attribution patching outperforms automated circuit discovery")
replaces one forward pass per intervention by one backward pass for all of them: the effect of
changing an activation a by δ on a scalar S is ≈ ∇_a S · δ.

Here the intervention is the attack's three-site directional ablation (:mod:`irr_ray.core.hooks`)
of one more unit direction u, on top of the current ablation of span(Q) (u ⊥ Q). Which sites the
estimate perturbs matters, because the three-site ablation is redundant: block l ≥ 1's input is
x_l = x_0 + Σ_{blocks < l} (w_attn + w_mlp), so once x_0 (block 0's input) and every write w are
projected, the projections of the later block inputs change nothing. The exact ablation therefore
equals the projection of the **write sites** W = {x_0, w_attn,l, w_mlp,l for every block l}, and
the estimate is taken along that path: at every s ∈ W (every position t and prompt n)
a_s ← a_s − ε (a_s·u) u, with a_s the value after the Q ablation (a_s·u is the same before or
after it, since u ⊥ Q). ε = 0 is the current model, ε = 1 the exact ablation of span(Q, u), and

    S(1) − S(0) ≈ dS/dε |_{ε=0} = − Σ_{s ∈ W} Σ_{n,t} (g_{s,n,t}·u) (a_{s,n,t}·u),

with g_s = ∂S/∂a_s the gradient of S with respect to the value the site passes on, taken with the
Q ablation active (it flows through Q's hooks, which are linear). The brief formula
Σ_{l,t} ∇_{x_l}·(−(x_l·u) u) over *every* block input instead differentiates a path on which the
component along u shrinks as (1 − ε)^L (each block input removes again what the earlier ones
already removed): its derivative is ≈ L times too large for what is written early, so it
over-weights the embeddings and early layers; on random Llama-shaped models it overshot the
exact change by ~10× (measured while building this). Along the write-site path the residual's u
component is (1 − ε)·(its value): linear, so what the estimate leaves out is only the model's own
curvature (the norms' rescaling, attention's softmax, the MLP nonlinearities, the log-odds), which
is not small when the ablated component is large. It is a ranking heuristic, not a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from irr_ray.core.hooks import at_write_sites

__all__ = ["SiteGradients", "ablation_effect", "first_order_scores"]


def ablation_effect(acts: torch.Tensor, grads: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """First-order change of a score when each unit direction is ablated at every site.

    ``acts`` and ``grads`` [..., D]: the site values a and the score's gradients g with respect to
    them (any leading shape: sites × prompts × positions); ``units`` [C, D]: unit directions (a
    zero row gives 0). Returns [C] float64: −Σ_rows (g·u_c)(a·u_c) (module docstring).
    """
    if acts.shape != grads.shape:
        raise ValueError(f"ablation_effect: acts {tuple(acts.shape)} and grads {tuple(grads.shape)} differ in shape")
    if units.dim() != 2 or units.shape[1] != acts.shape[-1]:
        raise ValueError(f"ablation_effect: units must be [C, {acts.shape[-1]}], got {tuple(units.shape)}")
    dtype = torch.promote_types(acts.dtype, torch.float32)  # bf16 activations: project in float32
    u = units.to(device=acts.device, dtype=dtype)
    a = torch.einsum("...d,cd->...c", acts.to(dtype), u).reshape(-1, u.shape[0])
    g = torch.einsum("...d,cd->...c", grads.to(dtype), u).reshape(-1, u.shape[0])
    return -(a.double() * g.double()).sum(0).cpu()


class SiteGradients:
    """Record every write-site value a_s (module docstring: x_0 and each block's two writes) and
    the gradient of a scalar with respect to it.

    Inside the context, each site's value x becomes x + z_s with z_s a zero leaf that requires
    grad, so ∂S/∂z_s = ∂S/∂a_s (parameters need not require grad); :meth:`backward` then returns
    (acts, grads), each [S, B, T, D] (S = 1 + 2 × layers, in forward order). Enter it *inside* an
    ablation context to get the ablated values and gradients through the ablation::

        with ablate_directions(model, q), SiteGradients(model) as rec:
            score = score_fn(model, batch)           # one forward, grad enabled
            acts, grads = rec.backward(score)
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._acts: list[torch.Tensor] = []
        self._zeros: list[torch.Tensor] = []
        self._ctx: Any = None
        self._grad: Any = None

    def _site(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(x, requires_grad=True)
        self._acts.append(x.detach())
        self._zeros.append(z)
        return x + z

    def __enter__(self) -> SiteGradients:
        self._grad = torch.enable_grad()
        self._grad.__enter__()
        self._ctx = at_write_sites(self.model, self._site)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)
        self._grad.__exit__(*exc)
        self._acts.clear()
        self._zeros.clear()

    def backward(self, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the scalar ``score`` (computed from the last forward in the context) with
        respect to every recorded site; clears the record for the next forward."""
        if not self._zeros:
            raise RuntimeError("SiteGradients.backward: no forward pass ran inside the context")
        grads = torch.autograd.grad(score, self._zeros, allow_unused=True)
        acts = torch.stack(self._acts)
        g = torch.stack([torch.zeros_like(z) if gr is None else gr for z, gr in zip(self._zeros, grads)])
        self._acts.clear()
        self._zeros.clear()
        return acts, g


def first_order_scores(model: nn.Module, batches: list[Any], score_fn: Callable[[nn.Module, Any], torch.Tensor],
                       units: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(S₀, Δ [C]) for S = Σ over ``batches`` of ``score_fn(model, batch)`` (a scalar per batch; make
    it the batch's share of a mean): its current value and the first-order change per unit
    direction ablated (:func:`ablation_effect`), one forward and one backward per batch. Run it
    inside the current ablation context."""
    total, delta = 0.0, torch.zeros(units.shape[0], dtype=torch.float64)
    with SiteGradients(model) as rec:
        for batch in batches:
            score = score_fn(model, batch)
            acts, grads = rec.backward(score)
            total += float(score.detach())
            delta += ablation_effect(acts, grads, units)
    return total, delta
