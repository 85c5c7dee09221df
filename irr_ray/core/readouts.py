"""Pooling a sequence of hidden states ``h [B, T, D]`` into one vector per sample ``[B, D]``.

Every readout is a weighted mean over *real* tokens, the ones where ``mask [B, T]`` is nonzero.
Positions are derived from the mask only — through each real token's rank
``r = cumsum(mask) − 1`` among the ``n`` real tokens of its row — so left padding, right padding
(or any other layout) give the same result for the same real tokens.

* ``masked_mean``   all real tokens.
* ``last_token``    the real token of rank ``n − 1``.
* ``chat_*``        offsets ``o ∈ {−5 … −1}`` relative to the end: rank ``max(n + o, 0)``. With a
  chat template and generation prompt these are the template tokens after the user turn, where
  the attacker reads the refusal direction. Short rows clamp to their first real token.
* ``random_subset`` ``k = clamp(ceil(fraction · n), 1, n)`` real tokens, drawn without
  replacement: the ``k`` with the smallest random keys.
* ``mixed_readout`` each sample draws one of last / random / chat with probabilities
  ``last_ratio / random_ratio / chat_ratio``, and the masked mean otherwise, so the matching
  loss cannot be met by moving a single position.

All functions are vectorised over the batch (masks, cumsum, gather, one batched matmul); the
random draws come from a caller-supplied ``torch.Generator`` so a step is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

CHAT_OFFSETS: tuple[int, ...] = (-5, -4, -3, -2, -1)
_CEIL_SLACK = 1e-9  # ceil(10 * 0.3) must be 3, not 4 (10 * 0.3 = 3.0000000000000004 in float64)

__all__ = [
    "CHAT_OFFSETS",
    "Readout",
    "ReadoutPlan",
    "chat_mean",
    "chat_position_indices",
    "chat_positions",
    "expected_subset_size",
    "last_token",
    "last_token_indices",
    "masked_mean",
    "mixed_readout",
    "mixed_readout_weights",
    "random_subset",
    "random_subset_mask",
    "sample_readout_plan",
]


class Readout(IntEnum):
    """Per-sample readout codes used by :class:`ReadoutPlan`."""

    LAST = 0
    RANDOM = 1
    CHAT = 2
    MEAN = 3


@dataclass(frozen=True)
class ReadoutPlan:
    """The random part of a mixed readout, drawn once per batch.

    ``mode [B]`` (int64, :class:`Readout` codes); ``random_keys [B, T]`` (int64, a random
    permutation of ``0..T−1`` per row: the random subset takes the real tokens with the smallest keys).
    """

    mode: Tensor
    random_keys: Tensor


def _real(h: Tensor | None, mask: Tensor) -> Tensor:
    """Validate shapes and return the mask as bool ``[B, T]``; every row needs a real token."""
    if mask.ndim != 2:
        raise ValueError(f"attention mask must have shape [B, T], got {list(mask.shape)}")
    if h is not None and (h.ndim != 3 or h.shape[:2] != mask.shape):
        raise ValueError(
            f"hidden states must be [B, T, D] matching mask {list(mask.shape)}, got {list(h.shape)}"
        )
    real = mask.bool()
    if not bool(real.any(dim=-1).all()):
        raise ValueError("every row of the attention mask needs at least one real (nonzero) token")
    return real


def _ranks(real: Tensor) -> tuple[Tensor, Tensor]:
    """Rank of each token among its row's real tokens ``[B, T]`` (−1 on padding) and counts ``n [B]``."""
    rank = real.long().cumsum(dim=-1) - 1
    return torch.where(real, rank, -1), real.sum(dim=-1)


def _pool(h: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``h [B, T, D]`` over the tokens selected by the 0/1 ``weights [B, T]`` → ``[B, D]``.

    The 0/1 weights are exact in any dtype and the matmul accumulates in at least float32; the
    division runs in float32 because token counts above 256 are not exact in bfloat16.
    """
    total = torch.bmm(weights.to(h.dtype).unsqueeze(1), h).squeeze(1)
    count = weights.sum(dim=-1, keepdim=True)
    if h.dtype in (torch.float16, torch.bfloat16):
        return (total.float() / count.float()).to(h.dtype)
    return total / count.to(h.dtype)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: ``Σ_t m_t h_t / Σ_t m_t``. ``h [B, T, D]``, ``mask [B, T]`` → ``[B, D]``."""
    real = _real(h, mask)
    return _pool(h, real)


def _last_indices(real: Tensor) -> Tensor:
    positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
    return torch.where(real, positions, -1).amax(dim=-1)


def last_token_indices(mask: Tensor) -> Tensor:
    """Position of each row's last real token ``[B]`` (int64), for either padding side."""
    return _last_indices(_real(None, mask))


def last_token(h: Tensor, mask: Tensor) -> Tensor:
    """Hidden state at the last real token. ``h [B, T, D]``, ``mask [B, T]`` → ``[B, D]``."""
    idx = _last_indices(_real(h, mask))
    return h.gather(1, idx.view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)


def _check_offsets(offsets: Sequence[int]) -> list[int]:
    offs = [int(o) for o in offsets]
    if not offs or any(o >= 0 for o in offs) or len(set(offs)) != len(offs):
        raise ValueError(
            f"chat offsets must be distinct negative integers (-1 = last real token), got {offsets}"
        )
    return offs


def _chat_indices(real: Tensor, offsets: Sequence[int]) -> tuple[Tensor, Tensor]:
    offs = torch.tensor(_check_offsets(offsets), device=real.device)
    _, n = _ranks(real)
    # A stable sort puts the real tokens first, in order: order[b, r] = position of rank r.
    order = torch.argsort((~real).to(torch.int8), dim=-1, stable=True)
    target = n.unsqueeze(-1) + offs  # [B, P]
    return order.gather(1, target.clamp_min(0)), target >= 0


def chat_position_indices(mask: Tensor, offsets: Sequence[int] = CHAT_OFFSETS) -> tuple[Tensor, Tensor]:
    """Positions ``[B, P]`` of the real tokens at ``offsets`` from the end, and validity ``[B, P]``.

    Offset ``o`` is the real token of rank ``n + o``; where ``n + o < 0`` (a row shorter than
    ``−o``) the position clamps to the row's first real token and ``valid`` is False.
    """
    return _chat_indices(_real(None, mask), offsets)


def chat_positions(h: Tensor, mask: Tensor, offsets: Sequence[int] = CHAT_OFFSETS) -> Tensor:
    """Hidden states at the chat-template offsets: ``[B, T, D]`` → ``[B, P, D]`` (clamped, see above)."""
    idx, _ = _chat_indices(_real(h, mask), offsets)
    return h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


def _chat_weights(real: Tensor, offsets: Sequence[int]) -> Tensor:
    """0/1 ``[B, T]`` marking the distinct real tokens at ranks ``max(n + o, 0)``."""
    offs = _check_offsets(offsets)
    rank, n = _ranks(real)
    rel = rank - n.unsqueeze(-1)  # −1 on the last real token
    hit = torch.isin(rel, torch.tensor(offs, device=real.device))
    clamped_first = (rank == 0) & (n + min(offs) <= 0).unsqueeze(-1)
    return real & (hit | clamped_first)


def chat_mean(h: Tensor, mask: Tensor, offsets: Sequence[int] = CHAT_OFFSETS) -> Tensor:
    """Mean over the distinct real tokens at the chat-template offsets → ``[B, D]``."""
    real = _real(h, mask)
    return _pool(h, _chat_weights(real, offsets))


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"random-subset fraction must be in (0, 1], got {fraction}")


def _random_keys(shape: torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    """A random permutation of ``0..T−1`` per row ``[B, T]`` (distinct keys: no ties to break)."""
    noise = torch.rand(shape, generator=generator, device=generator.device)
    return noise.argsort(dim=-1).argsort(dim=-1).to(device)


def _subset_weights(real: Tensor, keys: Tensor, fraction: float) -> Tensor:
    """0/1 ``[B, T]``: per row the ``k = clamp(ceil(fraction·n), 1, n)`` real tokens with smallest keys."""
    _check_fraction(fraction)
    _, n = _ranks(real)
    k = torch.ceil(n.to(torch.float64) * fraction - _CEIL_SLACK).long().clamp(min=1).minimum(n)
    masked = torch.where(real, keys, keys.shape[-1] + keys)  # padding sorts after every real token
    threshold = masked.sort(dim=-1).values.gather(1, (k - 1).unsqueeze(-1))  # k-th smallest key
    return real & (masked <= threshold)


def random_subset_mask(mask: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Bool ``[B, T]`` selecting ``clamp(ceil(fraction·n), 1, n)`` real tokens per row, without replacement."""
    real = _real(None, mask)
    return _subset_weights(real, _random_keys(real.shape, generator, real.device), fraction)


def random_subset(h: Tensor, mask: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Mean over a random ``fraction`` of each row's real tokens (see :func:`random_subset_mask`) → ``[B, D]``."""
    real = _real(h, mask)
    return _pool(h, _subset_weights(real, _random_keys(real.shape, generator, real.device), fraction))


def sample_readout_plan(
    mask: Tensor, last_ratio: float, random_ratio: float, chat_ratio: float, generator: torch.Generator
) -> ReadoutPlan:
    """Draw each sample's readout (iid, ``P(last), P(random), P(chat)`` = the ratios, mean otherwise)
    and the random-subset keys. Always two draws from ``generator``, whatever the ratios.
    """
    return _sample_plan(_real(None, mask), (last_ratio, random_ratio, chat_ratio), generator)


def _sample_plan(real: Tensor, ratios: tuple[float, float, float], generator: torch.Generator) -> ReadoutPlan:
    if any(r < 0 for r in ratios) or sum(ratios) > 1.0 + 1e-9:
        raise ValueError(f"readout ratios (last, random, chat) must be >= 0 and sum to <= 1, got {ratios}")
    last_ratio, random_ratio, chat_ratio = ratios
    u = torch.rand(real.shape[0], generator=generator, device=generator.device, dtype=torch.float64)
    bounds = torch.tensor(
        [last_ratio, last_ratio + random_ratio, last_ratio + random_ratio + chat_ratio],
        dtype=torch.float64,
        device=u.device,
    )
    mode = torch.bucketize(u, bounds, right=True)  # 0 last, 1 random, 2 chat, 3 mean
    keys = _random_keys(real.shape, generator, real.device)
    return ReadoutPlan(mode=mode.to(real.device), random_keys=keys)


def mixed_readout_weights(
    mask: Tensor, plan: ReadoutPlan, random_fraction: float, chat_offsets: Sequence[int] = CHAT_OFFSETS
) -> Tensor:
    """Bool ``[B, T]``: the tokens each sample averages under its planned readout."""
    return _plan_weights(_real(None, mask), plan, random_fraction, chat_offsets)


def _plan_weights(
    real: Tensor, plan: ReadoutPlan, random_fraction: float, chat_offsets: Sequence[int]
) -> Tensor:
    last = torch.zeros_like(real).scatter_(1, _last_indices(real).unsqueeze(-1), True)
    choices = torch.stack(
        [
            last,
            _subset_weights(real, plan.random_keys, random_fraction),
            _chat_weights(real, chat_offsets),
            real,
        ]
    )  # [4, B, T] in Readout order
    return choices.gather(0, plan.mode.view(1, -1, 1).expand(1, *real.shape)).squeeze(0)


def mixed_readout(
    h: Tensor,
    mask: Tensor,
    *,
    last_ratio: float,
    random_ratio: float,
    chat_ratio: float,
    random_fraction: float,
    generator: torch.Generator,
    chat_offsets: Sequence[int] = CHAT_OFFSETS,
) -> Tensor:
    """Per-sample mixed readout ``[B, T, D]`` → ``[B, D]`` in one batched matmul over ``h``.

    Sample ``b`` reads ``last`` with probability ``last_ratio``, a ``random_fraction`` subset with
    ``random_ratio``, the chat-template offsets with ``chat_ratio``, and the masked mean otherwise.
    """
    real = _real(h, mask)
    _check_fraction(random_fraction)
    _check_offsets(chat_offsets)
    plan = _sample_plan(real, (last_ratio, random_ratio, chat_ratio), generator)
    return _pool(h, _plan_weights(real, plan, random_fraction, chat_offsets))


def expected_subset_size(n: int, fraction: float) -> int:
    """``clamp(ceil(fraction · n), 1, n)`` for one row (a scalar helper for callers and tests)."""
    return max(1, min(n, math.ceil(n * fraction - _CEIL_SLACK)))
