"""``irr-ray bench core``: the core math's two hot paths, each against its plain form.

1. L2 covariance penalty, forward + backward, direct ``H × H`` form vs the float64 ``n × n`` Gram
   form, at ``(B, H)`` ∈ {(32, 2048), (128, 2048), (128, 4096)}, float32 input, half the batch per
   class; plus the float64 relative difference of the two values and gradients (target: Gram
   ≥ 10× faster at (128, 4096) on CPU and equal to 1e-5 relative).
2. Mixed readout, forward + backward, on ``[32, 256, 2048]`` left-padded: the vectorised
   :func:`irr_ray.core.readouts.mixed_readout` vs a per-sample Python loop over the same plan.

Times are medians of ``repeats`` runs after one warm-up; ``--quick`` runs fewer repeats. On CPU
the benchmark runs single-threaded (``IRR_RAY_BENCH_THREADS`` overrides): on a shared machine
oversubscribed intra-op threads make timings meaningless, and both forms get the same budget.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from irr_ray.core.losses import cov_penalty
from irr_ray.core.readouts import CHAT_OFFSETS, Readout, ReadoutPlan, mixed_readout, sample_readout_plan

COV_SIZES: tuple[tuple[int, int], ...] = ((32, 2048), (128, 2048), (128, 4096))
READOUT_SHAPE: tuple[int, int, int] = (32, 256, 2048)
# Readout setting of the method's sentence-pool runs: 1/3 last, 1/3 random, remainder mean;
# plus some chat-template samples so every branch is timed.
READOUT_RATIOS = {"last_ratio": 0.3, "random_ratio": 0.3, "chat_ratio": 0.2, "random_fraction": 0.25}
SEED = 0


def _timer(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up (seconds)."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def _balanced_labels(batch: int, device: torch.device) -> torch.Tensor:
    return (torch.arange(batch, device=device) % 2).long()


def _cov_step(h: torch.Tensor, labels: torch.Tensor, method: str) -> None:
    h.grad = None
    cov_penalty(h, labels, "l2", method).value.backward()  # type: ignore[arg-type]


def bench_cov(batch: int, hidden: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Time direct vs Gram (float32 input) and compare both forms in float64."""
    g = torch.Generator().manual_seed(SEED)
    base = torch.randn(batch, hidden, generator=g).to(device)
    labels = _balanced_labels(batch, device)
    h = base.clone().requires_grad_(True)
    direct_s = _timer(lambda: _cov_step(h, labels, "direct"), repeats, device)
    gram_s = _timer(lambda: _cov_step(h, labels, "gram"), repeats, device)
    values, grads = {}, {}
    for method in ("direct", "gram"):
        h64 = base.double().requires_grad_(True)
        value = cov_penalty(h64, labels, "l2", method).value  # type: ignore[arg-type]
        value.backward()
        values[method], grads[method] = value.item(), h64.grad
    value_rel = abs(values["gram"] - values["direct"]) / abs(values["direct"])
    grad_rel = ((grads["gram"] - grads["direct"]).norm() / grads["direct"].norm()).item()
    return {
        "B": batch,
        "H": hidden,
        "direct_s": direct_s,
        "gram_s": gram_s,
        "speedup": direct_s / gram_s,
        "value_rel_diff_f64": value_rel,
        "grad_rel_diff_f64": grad_rel,
    }


def naive_mixed_readout(
    h: torch.Tensor, mask: torch.Tensor, plan: ReadoutPlan, random_fraction: float
) -> torch.Tensor:
    """The per-sample loop the vectorised readout replaces (same plan, same semantics)."""
    rows = []
    for b in range(h.shape[0]):
        pos = mask[b].nonzero().squeeze(-1)
        n = pos.numel()
        mode = int(plan.mode[b])
        if mode == Readout.LAST:
            rows.append(h[b, pos[-1]])
        elif mode == Readout.RANDOM:
            k = max(1, min(n, math.ceil(round(n * random_fraction, 9))))
            chosen = pos[plan.random_keys[b, pos].argsort()[:k]]
            rows.append(h[b, chosen].mean(0))
        elif mode == Readout.CHAT:
            ranks = sorted({max(n + o, 0) for o in CHAT_OFFSETS})
            rows.append(h[b, pos[ranks]].mean(0))
        else:
            rows.append(h[b, pos].mean(0))
    return torch.stack(rows)


def bench_readout(repeats: int, device: torch.device) -> dict[str, Any]:
    batch, seq, dim = READOUT_SHAPE
    g = torch.Generator().manual_seed(SEED)
    h = torch.randn(batch, seq, dim, generator=g).to(device).requires_grad_(True)
    lengths = torch.randint(8, seq + 1, (batch,), generator=g)
    mask = (torch.arange(seq) >= seq - lengths.unsqueeze(-1)).long().to(device)  # left padding
    ratios = {k: v for k, v in READOUT_RATIOS.items() if k != "random_fraction"}
    fraction = READOUT_RATIOS["random_fraction"]

    def vectorised() -> torch.Tensor:
        gen = torch.Generator().manual_seed(SEED)
        return mixed_readout(h, mask, random_fraction=fraction, generator=gen, **ratios)

    def naive() -> torch.Tensor:
        gen = torch.Generator().manual_seed(SEED)
        plan = sample_readout_plan(mask, generator=gen, **ratios)
        return naive_mixed_readout(h, mask, plan, fraction)

    def step(fn: Callable[[], torch.Tensor]) -> None:
        h.grad = None
        fn().sum().backward()

    vec_s = _timer(lambda: step(vectorised), repeats, device)
    naive_s = _timer(lambda: step(naive), repeats, device)
    with torch.no_grad():
        max_abs = (vectorised() - naive()).abs().max().item()
    return {
        "shape": list(READOUT_SHAPE),
        "vectorised_s": vec_s,
        "naive_loop_s": naive_s,
        "speedup": naive_s / vec_s,
        "max_abs_diff": max_abs,
    }


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or "cpu")
    repeats = 3 if args.quick else 7
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("IRR_RAY_BENCH_THREADS", "1")))
    print(f"irr-ray bench core  device={device}  threads={torch.get_num_threads()}  repeats={repeats}")
    print("\nL2 covariance penalty, forward + backward (float32 input; float64 for the diffs)")
    header = f"{'B':>5} {'H':>6} {'direct s':>10} {'gram s':>10} {'gram speedup':>13} {'value rel f64':>14} {'grad rel f64':>13}"
    print(header)
    cov_rows = []
    for batch, hidden in COV_SIZES:
        r = bench_cov(batch, hidden, repeats, device)
        cov_rows.append(r)
        print(
            f"{r['B']:>5} {r['H']:>6} {r['direct_s']:>10.4f} {r['gram_s']:>10.4f} {r['speedup']:>12.1f}x "
            f"{r['value_rel_diff_f64']:>14.2e} {r['grad_rel_diff_f64']:>13.2e}"
        )
    readout = bench_readout(repeats, device)
    print(f"\nMixed readout, forward + backward, {readout['shape']} (float32)")
    print(f"{'vectorised s':>13} {'naive loop s':>13} {'speedup':>9} {'max |diff|':>11}")
    print(
        f"{readout['vectorised_s']:>13.4f} {readout['naive_loop_s']:>13.4f} {readout['speedup']:>8.1f}x "
        f"{readout['max_abs_diff']:>11.2e}"
    )
    big = cov_rows[-1]
    ok = big["speedup"] >= 10.0 and big["value_rel_diff_f64"] <= 1e-5
    print(
        f"\ntarget (Gram >= 10x at B={big['B']}, H={big['H']}, value equal to 1e-5 in float64): "
        + ("met" if ok else "NOT met")
    )
    if args.out:
        from irr_ray.utils.files import write_json_atomic

        write_json_atomic(
            args.out,
            {
                "target": "core",
                "device": str(device),
                "threads": torch.get_num_threads(),
                "repeats": repeats,
                "cov_penalty": cov_rows,
                "mixed_readout": readout,
                "target_met": ok,
            },
        )
    return 0
