"""Forward hooks on the residual stream: capture, directional ablation, activation addition.

Notation: a decoder with L blocks; x_l [B, T, D] is the residual stream at the *input* of block l
(``resid_pre``; for l < L it equals HF ``hidden_states[l]``), and block l computes

    x_{l+1} = x_l + w_attn + w_mlp,

where w_attn / w_mlp are the outputs of the block's two *write sites* (see
:mod:`irr_ray.models.families`: the attention / MLP modules, or their post-norms in sandwich-norm
families such as Gemma2/3 and OLMo2/3 and in GLM-4). :func:`check_write_sites` verifies that
decomposition on a loaded model whose family is matched by structure only.

Directional ablation (Arditi et al. 2024) with orthonormal rows D [K, D] applies
x ← x − (x·Dᵀ)·D at three sites of every block: its input x_l, w_attn and w_mlp. Projecting only
the block input is not enough — attention and MLP could write the direction back within the same
block; with all three sites projected, every x_l and the last block's output lie in span(D)^⊥.

All hooks work in the model's dtype (the directions are cast once per dtype/device) and are removed
when their context exits, also on exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from irr_ray.core.directions import project_out
from irr_ray.models.families import Layout, get_layout

__all__ = [
    "ResidualCapture",
    "ablate_directions",
    "ablate_directions_batched",
    "add_activation",
    "at_write_sites",
    "capture_residuals",
    "check_write_sites",
    "left_pad_position_ids",
    "restart_at",
]

Transform = Callable[[torch.Tensor], torch.Tensor]

# Rows of a direction set must be orthonormal (or, in the batched form, zero padding) to this
# tolerance on D·Dᵀ; checked once per context, in float32.
_ORTHONORMAL_ATOL = 1e-3


class _StopForward(Exception):
    """Raised by a capture hook once every requested layer is recorded (skips the rest)."""


# ---------------------------------------------------------------------------- hook plumbing


def _pre_hook(fn: Transform) -> Callable[..., Any]:
    """Forward pre-hook (``with_kwargs=True``) replacing the block's hidden-states input by fn(x)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        raise RuntimeError(f"{type(module).__name__} was called without a hidden-states input to hook")

    return hook


def _output_hook(fn: Transform) -> Callable[..., Any]:
    """Forward hook replacing a module's output tensor (or the first element of a tuple) by fn(out)."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            return fn(output)
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (fn(output[0]), *output[1:])
        raise RuntimeError(f"cannot hook the output of {type(module).__name__}: got {type(output).__name__}")

    return hook


def _first_tensor(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


@contextmanager
def _hooked(
    pre: Sequence[tuple[nn.Module, Transform]] = (),
    post: Sequence[tuple[nn.Module, Transform]] = (),
) -> Iterator[None]:
    """Install pre-hooks (block inputs) and output hooks; remove them all on exit."""
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(_pre_hook(fn), with_kwargs=True))
        for module, fn in post:
            handles.append(module.register_forward_hook(_output_hook(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _three_sites(layout: Layout, fn: Transform) -> AbstractContextManager[None]:
    """Apply fn at every block input and both write sites of every block (Arditi's three sites)."""
    pre = [(layout.blocks[i], fn) for i in range(layout.num_layers)]
    post = [(m, fn) for i in range(layout.num_layers) for m in (layout.attn_write(i), layout.mlp_write(i))]
    return _hooked(pre, post)


def at_write_sites(model: nn.Module, fn: Transform) -> AbstractContextManager[None]:
    """Replace the value x by fn(x) at block 0's input (the embeddings) and at every attention and
    MLP write site: the sites whose values sum to every residual x_l (x_l = x_0 + the writes of
    blocks < l). Hooks registered later run later: inside an ablation context fn sees the already
    ablated values. (The three-site ablation also projects the inputs of blocks ≥ 1, which is a
    no-op once x_0 and every write are projected.)"""
    layout = get_layout(model)
    post = [(m, fn) for i in range(layout.num_layers) for m in (layout.attn_write(i), layout.mlp_write(i))]
    return _hooked([(layout.blocks[0], fn)], post)


def _cast_cache(t: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``like(x)`` giving ``t`` in x's dtype and device, converting once per (dtype, device)."""
    cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in cache:
            cache[key] = t.to(dtype=x.dtype, device=x.device)
        return cache[key]

    return like


def _check_width(x: torch.Tensor, width: int, what: str) -> None:
    if x.shape[-1] != width:
        raise ValueError(f"{what} have hidden size {width} but the model's residual stream has {x.shape[-1]}")


def _groups(batch: int, n_sets: int, what: str) -> int:
    """Rows per set when ``n_sets`` per-row tensors cover a batch of ``batch`` rows in equal blocks."""
    if n_sets == 0 or batch % n_sets:
        raise ValueError(
            f"{what}: batch of {batch} rows is not a multiple of the {n_sets} per-row sets given "
            "(rows g·n … g·n+n−1 use set g)"
        )
    return batch // n_sets


# ---------------------------------------------------------------------------- capture


def left_pad_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only: ``clamp(cumsum(mask) − 1, min=0)``, [B, T].

    With these, a left-padded row sees the same positions as it would unpadded (as in HF
    ``generate``), so its activations do not depend on how much padding the batch needed —
    which matters for absolute position embeddings (GPT-2).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ResidualCapture:
    """Record the residual stream at chosen block inputs for every forward pass while active.

    ``layers`` index block inputs 0 … L−1 (x_l = HF ``hidden_states[l]``); index L means the last
    block's output (before the final norm). ``positions`` are negative offsets from the end of the
    sequence (−1 = last token; batches must be left-padded) — only those positions are kept.

    Use :meth:`run` for one forward under ``no_grad`` that stops as soon as the last requested layer
    is recorded (no later blocks, no LM head); or call the model yourself inside the context (e.g.
    for training with ``detach=False``) and read :attr:`residuals` after each call::

        with ResidualCapture(model, layers=[3, 4], positions=[-2, -1]) as cap:
            for batch in batches:
                acts = cap.run(batch["input_ids"], batch["attention_mask"])  # [2, B, 2, D]
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.layout = get_layout(model)
        n = self.layout.num_layers
        self.layers = list(range(n)) if layers is None else [int(i) for i in layers]
        bad = [i for i in self.layers if not 0 <= i <= n]
        if bad or not self.layers:
            raise ValueError(f"layers must be a non-empty list in 0..{n} (block inputs, {n} = last output); got {bad}")
        if positions is not None:
            positions = [int(p) for p in positions]
            if not positions or any(p >= 0 for p in positions):
                raise ValueError(f"positions must be negative offsets from the end (−1 = last), got {positions}")
        self.positions = positions
        self.detach = detach
        self._store: dict[int, torch.Tensor] = {}
        self._stop_after = max(self.layers)
        self._running = False
        self._handles: list[Any] = []

    def _record(self, layer: int, x: torch.Tensor) -> None:
        if self.positions is not None:
            t = x.shape[1]
            if -min(self.positions) > t:
                raise ValueError(f"position {min(self.positions)} is before the start of a {t}-token sequence")
            x = x[:, [t + p for p in self.positions]]
        self._store[layer] = x.detach() if self.detach else x
        if self._running and layer == self._stop_after:
            raise _StopForward

    def __enter__(self) -> ResidualCapture:
        n = self.layout.num_layers
        try:
            for layer in sorted(set(self.layers)):
                if layer < n:
                    hook = self._make_pre(layer)
                    self._handles.append(self.layout.blocks[layer].register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    self._handles.append(self.layout.blocks[n - 1].register_forward_hook(self._make_post(layer)))
        except BaseException:
            self._remove()
            raise
        return self

    def _make_pre(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._record(layer, args[0] if args else kwargs["hidden_states"])

        return hook

    def _make_post(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._record(layer, _first_tensor(output))

        return hook

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def clear(self) -> None:
        self._store.clear()

    @property
    def residuals(self) -> torch.Tensor:
        """[n_layers, B, T or len(positions), D] from the most recent forward, in ``layers`` order."""
        missing = [i for i in self.layers if i not in self._store]
        if missing:
            raise RuntimeError(f"no residuals recorded for layers {missing}: run a forward pass inside the context")
        return torch.stack([self._store[i] for i in self.layers])

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass under ``no_grad`` that stops after the last requested layer; returns residuals.

        Position ids count real tokens (:func:`left_pad_position_ids`), so left-padded rows give the
        activations they would have unpadded.
        """
        if not self._handles:
            raise RuntimeError("ResidualCapture.run must be called inside `with ResidualCapture(...)`")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.positions is not None and not bool(attention_mask[:, -1].all()):
            rows = torch.nonzero(attention_mask[:, -1] == 0).flatten().tolist()
            raise ValueError(f"positions count back from the end and need left padding; rows {rows} end in padding")
        self.clear()
        self._running = True
        try:
            with torch.no_grad():
                self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=left_pad_position_ids(attention_mask),
                    use_cache=False,
                )
        except _StopForward:
            pass
        finally:
            self._running = False
        return self.residuals


def capture_residuals(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Residual stream at block inputs: [n_layers, B, T, D], or [n_layers, B, len(positions), D].

    ``layers`` default to all block inputs 0 … L−1 (L = the last block's output); ``positions`` are
    negative offsets from the end of a left-padded batch. See :class:`ResidualCapture`.
    """
    with ResidualCapture(model, layers=layers, positions=positions) as cap:
        return cap.run(input_ids, attention_mask)


# ---------------------------------------------------------------------------- ablation


def _check_orthonormal(gram: torch.Tensor, allow_zero_rows: bool) -> None:
    """``gram`` = D·Dᵀ [..., K, K] must be I (or diag(0/1) when zero padding rows are allowed)."""
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    target = torch.where(diag < 0.5, torch.zeros_like(diag), torch.ones_like(diag)) if allow_zero_rows else 1.0
    off = gram - torch.diag_embed(diag)
    err = max(float((diag - target).abs().max()), float(off.abs().max())) if gram.numel() else 0.0
    if err > _ORTHONORMAL_ATOL:
        raise ValueError(
            f"directions must have orthonormal rows{' (or zero padding rows)' if allow_zero_rows else ''}: "
            f"max |D·Dᵀ − I| = {err:.3g}; orthonormalise them with irr_ray.core.orthonormalize"
        )


@contextmanager
def ablate_directions(model: nn.Module, directions: torch.Tensor) -> Iterator[None]:
    """Arditi three-site directional ablation of orthonormal rows ``directions`` [K, D], every layer.

    x ← x − (x·Dᵀ)·D at each block input (pre-hook) and at the attention and MLP write sites
    (output hooks), for every position and batch row. K = 0 is a no-op.
    """
    if directions.dim() != 2:
        raise ValueError(f"ablate_directions expects directions [K, D], got shape {tuple(directions.shape)}")
    layout = get_layout(model)
    if directions.shape[0] == 0:
        yield
        return
    d32 = directions.detach().float()
    _check_orthonormal(d32 @ d32.T, allow_zero_rows=False)
    like = _cast_cache(directions.detach())
    width = directions.shape[1]

    def ablate(x: torch.Tensor) -> torch.Tensor:
        _check_width(x, width, "directions")
        return project_out(x, like(x))

    with _three_sites(layout, ablate):
        yield


@contextmanager
def ablate_directions_batched(model: nn.Module, directions: torch.Tensor) -> Iterator[None]:
    """Three-site ablation where each batch row carries its own direction set; ``directions`` [G, K, D].

    For a batch of B = G·n rows, rows g·n … g·n+n−1 use set g (n = 1: one set per row), so G
    candidate sets × n prompts are scored in one forward pass without repeating the directions:

        x[g, i] ← x[g, i] − (x[g, i]·D[g]ᵀ)·D[g]     (einsum over the [G, n, T, D] view of x)

    Sets with fewer than K directions are padded with zero rows, which change nothing (their
    coefficient x·0 is 0). Non-zero rows of each set must be orthonormal.
    """
    if directions.dim() != 3:
        raise ValueError(f"ablate_directions_batched expects directions [G, K, D], got {tuple(directions.shape)}")
    layout = get_layout(model)
    d32 = directions.detach().float()
    _check_orthonormal(d32 @ d32.transpose(1, 2), allow_zero_rows=True)
    like = _cast_cache(directions.detach())
    n_sets, _, width = directions.shape

    def ablate(x: torch.Tensor) -> torch.Tensor:
        _check_width(x, width, "directions")
        d = like(x)
        xg = x.reshape(n_sets, _groups(x.shape[0], n_sets, "ablate_directions_batched"), *x.shape[1:])
        coeff = torch.einsum("gn...d,gkd->gn...k", xg, d)
        return (xg - torch.einsum("gn...k,gkd->gn...d", coeff, d)).reshape(x.shape)

    with _three_sites(layout, ablate):
        yield


# ---------------------------------------------------------------------------- write-site check


def _check_tolerance(dtype: torch.dtype) -> float:
    """1e-4 in float32; 8 ulp in 16-bit dtypes (the sums in the block round at that scale)."""
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def check_write_sites(model: nn.Module, layout: Layout, seq_len: int = 6, seed: int = 0) -> str | None:
    """Verify on ``model`` itself that ``layout``'s write sites are what reaches the residual stream.

    Returns ``None`` when both checks pass, else one line saying which failed where. Two tiny
    forward passes (one row of ``seq_len`` tokens, eval mode, no grad, all hooks removed after):

    1. **Decomposition.** Every block input is rescaled to unit RMS and the outputs of the two
       write sites are *replaced* by fixed random vectors of RMS 3 and 2; the block output must then
       equal input + both replacements (relative error ≤ tol). This holds exactly when the block
       computes x + w_attn + w_mlp from its write sites — the assumption behind the three-site
       ablation (Arditi et al. 2024) — and fails by O(1) when a norm, gain or anything else sits
       between a site and the residual (e.g. GLM-4's ``post_self_attn_layernorm`` after
       ``self_attn``), whatever the model's width or norm gains.
    2. **Ablation.** With a random unit direction d ablated at the three sites (the hooks
       :func:`ablate_directions` installs), every block output must have |⟨y, d⟩| / ‖y‖ ≤ tol.

    tol is 1e-4 in float32 and 8 ulp in 16-bit dtypes (:func:`_check_tolerance`).
    """
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return "the model has no floating-point parameters"
    device, dtype = params[0].device, params[0].dtype
    tol = _check_tolerance(dtype)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = int(getattr(embeddings, "num_embeddings", 0) or getattr(getattr(model, "config", None), "vocab_size", 0))
    if vocab < 1:
        return "cannot tell the vocabulary size to build a test input"
    ids = (torch.arange(seq_len) * 7 + 3).remainder(vocab).unsqueeze(0).to(device)
    n = layout.num_layers
    g = torch.Generator().manual_seed(seed)
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    written: dict[tuple[int, str], torch.Tensor] = {}

    def unit_rms(i: int) -> Transform:
        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x / x.float().pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6).to(x.dtype)
            inputs[i] = x.double()
            return x

        return fn

    def replace(i: int, site: str, vector: torch.Tensor) -> Transform:
        def fn(out: torch.Tensor) -> torch.Tensor:
            if out.shape[-1] != vector.shape[-1]:
                raise _SiteMismatch(f"block {i} {site} output has width {out.shape[-1]}, not {vector.shape[-1]}")
            new = vector.to(device=out.device, dtype=out.dtype).expand_as(out).clone()
            written[(i, site)] = new.double()
            return new

        return fn

    def record(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            outputs[i] = _first_tensor(output).double()

        return hook

    was_training = model.training
    handles = [layout.blocks[i].register_forward_hook(record(i)) for i in range(n)]
    try:
        model.eval()
        with torch.no_grad():
            if width is None:  # learn the residual width from block 0's input
                with _hooked([(layout.blocks[0], unit_rms(0))]):
                    model(input_ids=ids, use_cache=False)
                width = inputs[0].shape[-1]
            u = torch.randn(2, int(width), generator=g, dtype=torch.float64)
            u = u / u.pow(2).mean(-1, keepdim=True).sqrt() * torch.tensor([[3.0], [2.0]], dtype=torch.float64)
            inputs.clear()
            outputs.clear()
            pre = [(layout.blocks[i], unit_rms(i)) for i in range(n)]
            post = [(m, replace(i, site, u[j])) for i in range(n)
                    for j, (site, m) in enumerate((("attention", layout.attn_write(i)), ("MLP", layout.mlp_write(i))))]
            with _hooked(pre, post):
                model(input_ids=ids, use_cache=False)
            for i in range(n):
                parts = [inputs.get(i), written.get((i, "attention")), written.get((i, "MLP")), outputs.get(i)]
                if any(t is None for t in parts):
                    return f"block {i} or one of its write sites did not run in a forward pass"
                x, a, m, y = parts
                if y.shape != x.shape:
                    return f"block {i} output has shape {tuple(y.shape)}, its input {tuple(x.shape)}"
                expected = x + a + m
                err = float(((y - expected).norm(dim=-1) / expected.norm(dim=-1)).max())
                if not err <= tol:
                    return (f"block {i} output ≠ input + {layout.attn_write_name} + {layout.mlp_write_name} "
                            f"outputs: relative error {err:.3g} > {tol:.0e}")

            d = torch.randn(1, int(width), generator=g)
            d = d / d.norm()
            outputs.clear()
            like = _cast_cache(d)
            with _three_sites(layout, lambda x: project_out(x, like(x))):
                model(input_ids=ids, use_cache=False)
            d64 = d.double().to(device)
            for i in range(n):
                y = outputs[i]
                leak = float(((y @ d64.T).squeeze(-1).abs() / y.norm(dim=-1).clamp_min(1e-30)).max())
                if not leak <= tol:
                    return f"block {i} output keeps {leak:.3g} of its norm along an ablated direction (> {tol:.0e})"
    except _SiteMismatch as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe forward means "not verified"
        return f"the check's forward pass failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return None


class _SiteMismatch(Exception):
    """A write site's output cannot be a residual-stream increment (wrong width)."""


# ---------------------------------------------------------------------------- activation addition


@contextmanager
def add_activation(
    model: nn.Module,
    layer: int | Sequence[int],
    vector: torch.Tensor,
    coeff: float = 1.0,
    prompt_only: bool = False,
) -> Iterator[None]:
    """Activation addition at block inputs: x_l ← x_l + coeff·v at every position.

    ``prompt_only``: add only in forwards over more than one position — the prompt's prefill in
    KV-cached generation — so the prompt is steered but the generated tokens are not (Arditi et
    al. add at every position, generated ones included: the default).

    ``vector`` is [D] (all rows) or [G, D] with a batch of B = G·n rows (rows g·n … g·n+n−1 get
    v[g]). ``layer`` is one block index, or — with a [G, D] vector — one per set, so candidates
    from different source layers are scored in one forward (one hook per distinct layer, adding
    v[g]·[layer_g = l]). Arditi et al. add the raw difference of means at its source layer with
    coeff = 1 to test that a direction *induces* refusal on harmless prompts.
    """
    layout = get_layout(model)
    n = layout.num_layers
    if vector.dim() not in (1, 2):
        raise ValueError(f"add_activation expects vector [D] or [G, D], got shape {tuple(vector.shape)}")
    per_set_layers = not isinstance(layer, int)
    layers = [int(i) for i in layer] if per_set_layers else [int(layer)]  # type: ignore[union-attr]
    if per_set_layers and (vector.dim() != 2 or len(layers) != vector.shape[0]):
        raise ValueError(
            f"add_activation: {len(layers)} per-set layers need a vector of shape [{len(layers)}, D], "
            f"got {tuple(vector.shape)}"
        )
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"add_activation: layer(s) {bad} out of range 0..{n - 1}")
    width = vector.shape[-1]
    v = vector.detach() * coeff
    pre: list[tuple[nn.Module, Transform]] = []
    for target in sorted(set(layers)):
        if per_set_layers:
            mask = torch.tensor([i == target for i in layers], dtype=v.dtype, device=v.device)
            add = _adder(v * mask[:, None], width)
        else:
            add = _adder(v, width)
        pre.append((layout.blocks[target], _prefill_only(add) if prompt_only else add))
    with _hooked(pre):
        yield


def _prefill_only(fn: Transform) -> Transform:
    """``fn`` on forwards over more than one position [B, T > 1, D]; single-token decode steps pass."""
    return lambda x: fn(x) if x.dim() == 3 and x.shape[1] > 1 else x


def _adder(v: torch.Tensor, width: int) -> Transform:
    like = _cast_cache(v)

    def add(x: torch.Tensor) -> torch.Tensor:
        _check_width(x, width, "activation vectors")
        vx = like(x)
        if vx.dim() == 1:
            return x + vx
        xg = x.reshape(vx.shape[0], _groups(x.shape[0], vx.shape[0], "add_activation"), *x.shape[1:])
        shape = (vx.shape[0], 1) + (1,) * (x.dim() - 2) + (width,)
        return (xg + vx.reshape(shape)).reshape(x.shape)

    return add


# ---------------------------------------------------------------------------- restart from a cached residual


@contextmanager
def restart_at(model: nn.Module, layer: int, residual: torch.Tensor) -> Iterator[None]:
    """Run only blocks ``layer`` … L−1 of the next forwards, starting from a cached residual.

    Blocks 0 … ``layer``−1 become the identity (their ``forward`` is shadowed for the duration),
    and a pre-hook registered *before* every other hook of block ``layer`` replaces its input by
    ``residual`` [B, T, D] = x_layer. Hooks the caller adds later (ablation, activation addition)
    therefore see the restored x_layer, as in a full forward. Exact only when the skipped blocks
    produce nothing but x_layer that later blocks read — the attack's induce pass checks that
    once per model against a full forward.
    """
    layout = get_layout(model)
    if not 0 <= layer < layout.num_layers:
        raise ValueError(f"restart_at: layer {layer} out of range 0..{layout.num_layers - 1}")
    skipped = [layout.blocks[i] for i in range(layer)]

    def identity(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def put_back(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (residual, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": residual}

    handle = layout.blocks[layer].register_forward_pre_hook(put_back, with_kwargs=True, prepend=True)
    try:
        for block in skipped:
            block.forward = identity  # an instance attribute shadows the class's forward
        yield
    finally:
        handle.remove()
        for block in skipped:
            block.__dict__.pop("forward", None)
