"""Readouts on left- and right-padded batches against a naive per-sample float64 loop."""

from __future__ import annotations

import math

import pytest
import torch

from irr_ray.core.readouts import (
    CHAT_OFFSETS,
    Readout,
    chat_mean,
    chat_position_indices,
    chat_positions,
    last_token,
    masked_mean,
    mixed_readout,
    mixed_readout_weights,
    random_subset,
    random_subset_mask,
    sample_readout_plan,
)

LENGTHS = [1, 2, 3, 5, 6, 9, 12]  # includes rows shorter than the 5 chat offsets
T, D = 12, 4


def _batch(side: str, lengths: list[int] = LENGTHS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``h [B, T, D]`` float64 with garbage on padding, and the matching left/right ``mask``."""
    g = torch.Generator().manual_seed(seed)
    h = 100 * torch.randn(len(lengths), T, D, dtype=torch.float64, generator=g)  # padding: large junk
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        real = torch.randn(n, D, dtype=torch.float64, generator=g)
        span = slice(T - n, T) if side == "left" else slice(0, n)
        h[b, span], mask[b, span] = real, 1
    return h, mask


def _real_positions(mask: torch.Tensor, b: int) -> list[int]:
    return [t for t in range(mask.shape[1]) if mask[b, t] != 0]


def _naive_chat(h: torch.Tensor, mask: torch.Tensor, b: int, offsets: tuple[int, ...]) -> torch.Tensor:
    pos = _real_positions(mask, b)
    ranks = sorted({max(len(pos) + o, 0) for o in offsets})
    return torch.stack([h[b, pos[r]] for r in ranks]).mean(0)


def _naive_subset_size(n: int, fraction: float) -> int:
    return max(1, min(n, math.ceil(round(n * fraction, 9))))


def _naive_mixed(h: torch.Tensor, mask: torch.Tensor, plan, fraction: float) -> torch.Tensor:  # noqa: ANN001
    rows = []
    for b in range(h.shape[0]):
        pos = _real_positions(mask, b)
        mode = Readout(int(plan.mode[b]))
        if mode is Readout.LAST:
            rows.append(h[b, pos[-1]])
        elif mode is Readout.RANDOM:
            keys = [int(plan.random_keys[b, t]) for t in pos]
            chosen = [p for _, p in sorted(zip(keys, pos, strict=True))][: _naive_subset_size(len(pos), fraction)]
            rows.append(h[b, chosen].mean(0))
        elif mode is Readout.CHAT:
            rows.append(_naive_chat(h, mask, b, CHAT_OFFSETS))
        else:
            rows.append(h[b, pos].mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_last_chat_match_naive_loop(side: str) -> None:
    h, mask = _batch(side)
    naive_mean = torch.stack([h[b, _real_positions(mask, b)].mean(0) for b in range(len(LENGTHS))])
    naive_last = torch.stack([h[b, _real_positions(mask, b)[-1]] for b in range(len(LENGTHS))])
    torch.testing.assert_close(masked_mean(h, mask), naive_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last_token(h, mask), naive_last, rtol=0, atol=0)
    for offsets in (CHAT_OFFSETS, (-3, -1), (-7,)):
        naive_chat = torch.stack([_naive_chat(h, mask, b, offsets) for b in range(len(LENGTHS))])
        torch.testing.assert_close(chat_mean(h, mask, offsets), naive_chat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_chat_positions_clamp_short_rows(side: str) -> None:
    h, mask = _batch(side)
    idx, valid = chat_position_indices(mask)
    gathered = chat_positions(h, mask)
    assert gathered.shape == (len(LENGTHS), 5, D)
    for b, n in enumerate(LENGTHS):
        pos = _real_positions(mask, b)
        expected = [pos[max(n + o, 0)] for o in CHAT_OFFSETS]
        assert idx[b].tolist() == expected
        assert valid[b].tolist() == [n + o >= 0 for o in CHAT_OFFSETS]
        torch.testing.assert_close(gathered[b], h[b, expected], rtol=0, atol=0)


def test_padding_side_does_not_change_deterministic_readouts() -> None:
    left_h, left_mask = _batch("left")
    right_h, right_mask = _batch("right")
    for fn in (masked_mean, last_token, chat_mean):
        torch.testing.assert_close(fn(left_h, left_mask), fn(right_h, right_mask), rtol=1e-12, atol=1e-12)


def test_non_contiguous_mask_uses_real_token_ranks() -> None:
    h = torch.arange(6 * 2, dtype=torch.float64).view(1, 6, 2)
    mask = torch.tensor([[0, 1, 0, 1, 1, 0]])
    torch.testing.assert_close(last_token(h, mask), h[0, 4].unsqueeze(0))
    torch.testing.assert_close(chat_mean(h, mask, (-2, -1)), h[0, [3, 4]].mean(0, keepdim=True))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_random_subset_is_a_seeded_subset_of_real_tokens(side: str, fraction: float) -> None:
    h, mask = _batch(side)
    sel = random_subset_mask(mask, fraction, torch.Generator().manual_seed(5))
    again = random_subset_mask(mask, fraction, torch.Generator().manual_seed(5))
    assert torch.equal(sel, again)
    assert not (sel & (mask == 0)).any()
    assert sel.sum(-1).tolist() == [_naive_subset_size(n, fraction) for n in LENGTHS]
    pooled = random_subset(h, mask, fraction, torch.Generator().manual_seed(5))
    naive = torch.stack([h[b, sel[b]].mean(0) for b in range(len(LENGTHS))])
    torch.testing.assert_close(pooled, naive, rtol=1e-12, atol=1e-12)


def test_random_subset_draws_uniformly_without_replacement() -> None:
    mask = torch.ones(4000, 8, dtype=torch.long)
    sel = random_subset_mask(mask, 0.25, torch.Generator().manual_seed(0))
    assert (sel.sum(-1) == 2).all()
    freq = sel.double().mean(0)  # each position chosen with probability 2/8
    assert torch.allclose(freq, torch.full((8,), 0.25, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("ratios", [(0.3, 0.3, 0.2), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.5, 0.5)])
def test_mixed_readout_matches_naive_loop(side: str, ratios: tuple[float, float, float]) -> None:
    h, mask = _batch(side, lengths=LENGTHS * 3, seed=1)
    plan = sample_readout_plan(mask, *ratios, torch.Generator().manual_seed(11))
    weights = mixed_readout_weights(mask, plan, 0.4)
    pooled = (weights.double().unsqueeze(-1) * h).sum(1) / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(pooled, _naive_mixed(h, mask, plan, 0.4), rtol=1e-12, atol=1e-12)
    out = mixed_readout(
        h,
        mask,
        last_ratio=ratios[0],
        random_ratio=ratios[1],
        chat_ratio=ratios[2],
        random_fraction=0.4,
        generator=torch.Generator().manual_seed(11),
    )
    torch.testing.assert_close(out, _naive_mixed(h, mask, plan, 0.4), rtol=1e-12, atol=1e-12)


def test_mixed_assignment_follows_ratios_and_seed() -> None:
    mask = torch.ones(20000, 3, dtype=torch.long)
    plan = sample_readout_plan(mask, 0.2, 0.3, 0.1, torch.Generator().manual_seed(0))
    freq = torch.bincount(plan.mode, minlength=4).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.1, 0.4], dtype=torch.float64), atol=0.015)
    same = sample_readout_plan(mask, 0.2, 0.3, 0.1, torch.Generator().manual_seed(0))
    other = sample_readout_plan(mask, 0.2, 0.3, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(plan.mode, same.mode) and torch.equal(plan.random_keys, same.random_keys)
    assert not torch.equal(plan.mode, other.mode)


def test_mixed_readout_bfloat16_and_gradient() -> None:
    h, mask = _batch("left")
    hb = h.bfloat16().requires_grad_(True)
    out = mixed_readout(
        hb, mask, last_ratio=0.3, random_ratio=0.3, chat_ratio=0.2, random_fraction=0.5,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.dtype == torch.bfloat16 and out.shape == (len(LENGTHS), D)
    out.float().sum().backward()
    assert hb.grad is not None and (hb.grad[mask == 0] == 0).all()


def test_bad_inputs_raise() -> None:
    h, mask = _batch("left")
    with pytest.raises(ValueError, match="at least one real"):
        masked_mean(h, torch.cat([mask[:-1], torch.zeros(1, T, dtype=torch.long)]))
    with pytest.raises(ValueError, match="matching mask"):
        last_token(h[:, :-1], mask)
    with pytest.raises(ValueError, match="sum to <= 1"):
        sample_readout_plan(mask, 0.6, 0.6, 0.0, torch.Generator())
    with pytest.raises(ValueError, match="fraction"):
        random_subset_mask(mask, 0.0, torch.Generator())
    with pytest.raises(ValueError, match="negative integers"):
        chat_mean(h, mask, (0, -1))


def test_bench_naive_loop_agrees_with_vectorised() -> None:
    """The benchmark's per-sample loop computes the same readout it is timed against."""
    from irr_ray.bench.core import naive_mixed_readout

    h, mask = _batch("right", lengths=LENGTHS * 2, seed=4)
    plan = sample_readout_plan(mask, 0.3, 0.3, 0.2, torch.Generator().manual_seed(2))
    expected = _naive_mixed(h, mask, plan, 0.25)
    torch.testing.assert_close(naive_mixed_readout(h, mask, plan, 0.25), expected, rtol=1e-12, atol=1e-12)


def test_bfloat16_mean_over_many_tokens_stays_within_bf16_rounding() -> None:
    g = torch.Generator().manual_seed(0)
    h = (1.0 + torch.rand(2, 1100, 8, generator=g, dtype=torch.float64)).bfloat16()
    mask = torch.zeros(2, 1100, dtype=torch.long)
    mask[0, :1023], mask[1, 77:] = 1, 1
    expected = torch.stack([h[0, :1023].double().mean(0), h[1, 77:].double().mean(0)])
    torch.testing.assert_close(masked_mean(h, mask).double(), expected, rtol=2**-7, atol=0)
