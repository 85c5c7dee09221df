"""The FLOP floor of a piece of work: its matrix-multiply FLOPs at this core's peak matmul rate.

A transformer's work is matrix multiplies (the linear layers, forward and backward, and attention)
plus everything else (norms, activations, rotary embeddings, Python, the framework, tokenisation,
the judge, probes, samplers). A path that does the same matmuls cannot take less than

    floor = matmul FLOPs / peak matmul rate,

even if everything else cost nothing. So ``plain seconds / floor`` is the largest speed-up over the
plain path that any path doing these FLOPs could reach — a bound, not an estimate: only fewer FLOPs
(fewer or smaller forwards) can go past it, or a lower precision, which changes the numbers the
attack's choices are made from.

* FLOPs are counted by torch's own :class:`torch.utils.flop_counter.FlopCounterMode` (2·m·k·n per
  matmul, forward and backward; attention by its QKᵀ and PV products). Torch's table lacks the CPU
  flash-attention kernel; it is added here with the same formula as the CUDA one
  (:func:`torch.utils.flop_counter.sdpa_flop_count`).
* Matmuls are not all an eager path must run: norms, activations, rotary embeddings, residual adds
  and the ablation's projections are separate memory-bound kernels. The same run times every
  PyTorch kernel where it is dispatched (:class:`KernelTimer`, view and other metadata ops left
  out) and splits the time into matmul kernels and the rest; ``1 + rest ÷ matmul`` scales the
  matmul floor to the floor of an eager path that runs the same kernels with no Python, framework,
  tokeniser, judge, probe or sampler time at all. The scaling shrinks the rest along with the
  matmuls down to the peak, though memory-bound kernels would not speed up with them: it errs low,
  i.e. towards a larger reachable speed-up.
* The peak is measured, not taken from a datasheet: the best of repeated single-threaded float32
  ``F.linear`` calls at the model's own shapes and at a large square one
  (:func:`peak_matmul_gflops`), i.e. what this core's BLAS reaches at all.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten


def _cpu_flash_attention(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any,
                                  *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward,
}


MATMUL_KERNELS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
})
# Ops that only make a view or read metadata (no arithmetic, no copy): not timed as kernels.
METADATA_OPS = frozenset({
    "aten::as_strided", "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::transpose", "aten::t",
    "aten::permute", "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
    "aten::alias", "aten::detach", "aten::lift_fresh", "aten::empty", "aten::empty_like", "aten::empty_strided",
    "aten::view_as", "aten::expand_as", "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::chunk",
    "aten::unbind", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::sym_size", "aten::sym_stride",
    "aten::sym_numel", "aten::sym_storage_offset", "aten::_reshape_alias",
})


class KernelTimer(TorchDispatchMode):
    """Seconds spent in PyTorch kernels, as dispatched (below autograd: forward and backward ops),
    split into matmul kernels and every other op that computes or copies (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = {"matmul": 0.0, "other": 0.0}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t0
        name = func._schema.name
        if name in MATMUL_KERNELS:
            self.seconds["matmul"] += dt
        elif name not in METADATA_OPS:
            self.seconds["other"] += dt
        return out


class CountedFlops:
    """``with CountedFlops() as c: work()`` → ``c.flops`` (the matmul FLOPs of ``work``) and
    ``c.kernel_seconds`` (:class:`KernelTimer`) (module docstring). Both run every op through a
    Python dispatch mode: the work's own time is measured in a separate run."""

    def __init__(self) -> None:
        self._timer = KernelTimer()
        self._mode = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        self.flops = 0
        self.kernel_seconds = {"matmul": 0.0, "other": 0.0}

    def __enter__(self) -> CountedFlops:
        self._timer.__enter__()  # entered first: the innermost handler, next to the kernels
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self._timer.__exit__(*exc)
        self.flops = int(self._mode.get_total_flops())
        self.kernel_seconds = dict(self._timer.seconds)


def peak_matmul_gflops(hidden: int, intermediate: int, repeats: int = 5) -> tuple[float, tuple[int, int, int]]:
    """(best float32 GFLOP/s of one thread's ``F.linear``, the (m, k, n) that reached it) over the
    model's MLP shapes at a decode-step and a prefill-sized batch and a 1024³ product; the best of
    ``repeats`` timings each (the least disturbed by other load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best, where = 0.0, (0, 0, 0)
        for m, k, n in ((64, hidden, intermediate), (2560, hidden, intermediate), (2560, intermediate, hidden),
                        (1024, 1024, 1024)):
            a, b = torch.randn(m, k), torch.randn(n, k)
            flops = 2 * m * k * n
            reps = max(5, int(2e9 / flops))
            for _ in range(3):
                F.linear(a, b)
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(reps):
                    F.linear(a, b)
                rate = flops * reps / (time.perf_counter() - t0) / 1e9
                if rate > best:
                    best, where = rate, (m, k, n)
        return best, where
    finally:
        torch.set_num_threads(threads)

