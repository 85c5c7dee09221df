"""The FLOP floor's counter (:mod:`irr_ray.bench.floor`): torch's FlopCounterMode plus the CPU
flash-attention kernel it does not know, forward and backward."""

from __future__ import annotations

import torch
from torch.nn import functional as F  # noqa: N812

from irr_ray.bench.floor import CountedFlops, peak_matmul_gflops


def test_linear_counts_two_m_k_n_forward_and_backward() -> None:
    x = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(5, 8)
    with torch.no_grad(), CountedFlops() as c:
        F.linear(x, w)
    assert c.flops == 2 * 6 * 8 * 5
    with CountedFlops() as c:
        F.linear(x, w).sum().backward()  # the input gradient only: w needs none
    assert c.flops == 2 * (2 * 6 * 8 * 5)


def test_cpu_attention_is_counted() -> None:
    b, h, t, d = 2, 4, 10, 16
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    with CountedFlops() as c:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    forward = c.flops
    assert forward == 2 * (2 * b * h * t * t * d)  # QKᵀ and PV, as torch counts them (causal mask ignored)
    with CountedFlops() as c:
        out.sum().backward()
    assert c.flops > forward


def test_peak_is_measured_at_one_of_the_shapes() -> None:
    rate, shape = peak_matmul_gflops(32, 64, repeats=1)
    assert rate > 0 and shape in {(64, 32, 64), (2560, 32, 64), (2560, 64, 32), (1024, 1024, 1024)}


def test_kernel_time_is_split_into_matmul_and_the_rest() -> None:
    x, w = torch.randn(256, 128), torch.randn(512, 128)
    with CountedFlops() as c:
        y = torch.nn.functional.silu(F.linear(x, w)).view(256, 4, 128).transpose(0, 1)
    assert y.shape == (4, 256, 128)
    assert c.kernel_seconds["matmul"] > 0 and c.kernel_seconds["other"] > 0  # silu; view/transpose are not kernels
