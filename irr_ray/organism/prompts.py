"""Requests built from the templates: training pools, and the held-out evaluation prompts.

A request is ``frame.format(a=action, s=suffix)``. Training (chat and safety data) only ever uses
*seen* actions in *seen* frames. The held-out evaluation set has two parts, both never used in
any chat or safety training:

* ``heldout_actions`` — held-out actions (two harmful, two harmless per subcategory) in any frame;
* ``heldout_frames``  — seen actions in the three held-out frames.

The evaluation prompts are sampled with a fixed generator (not the build seed), so every seed is
measured on the same prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from irr_ray.organism.vocab.templates import CATEGORIES, FRAMES, HELDOUT_FRAMES, SUFFIXES

EVAL_SPLITS = ("seen", "heldout_actions", "heldout_frames")
HELDOUT_SPLITS = ("heldout_actions", "heldout_frames")
_EVAL_SAMPLING_SEED = 20240601


@dataclass(frozen=True)
class Action:
    text: str
    harmful: bool
    subcategory: str
    heldout: bool


@cache
def all_actions() -> tuple[Action, ...]:
    out: list[Action] = []
    for c in CATEGORIES:
        out += [Action(a, True, c.subcategory, False) for a in c.harmful]
        out += [Action(a, False, c.subcategory, False) for a in c.harmless]
        out += [Action(a, True, c.subcategory, True) for a in c.heldout_harmful]
        out += [Action(a, False, c.subcategory, True) for a in c.heldout_harmless]
    return tuple(out)


def actions(harmful: bool, heldout: bool) -> list[Action]:
    return [a for a in all_actions() if a.harmful == harmful and a.heldout == heldout]


def render(frame: str, action: str, suffix: str = "") -> str:
    return frame.format(a=action, s=suffix)


def sample_requests(rng: random.Random, pool: list[Action], frames: tuple[str, ...], n: int) -> list[tuple[str, Action]]:
    """``n`` (prompt, action) pairs: uniform action, frame and suffix (with replacement)."""
    out = []
    for _ in range(n):
        a = rng.choice(pool)
        out.append((render(rng.choice(frames), a.text, rng.choice(SUFFIXES)), a))
    return out


def _distinct(rng: random.Random, pool: list[Action], frames: tuple[str, ...], n: int) -> list[str]:
    """``n`` distinct prompts from every (action, frame, suffix) combination, in a fixed order."""
    combos = sorted({render(f, a.text, s) for a in pool for f in frames for s in SUFFIXES})
    rng.shuffle(combos)
    return combos[:n]


@cache
def _eval_sets(n_per_split: int) -> dict[str, dict[str, tuple[str, ...]]]:
    rng = random.Random(_EVAL_SAMPLING_SEED)
    sets: dict[str, dict[str, tuple[str, ...]]] = {}
    for kind, harmful in (("harmful", True), ("harmless", False)):
        seen, held = actions(harmful, False), actions(harmful, True)
        sets.setdefault("seen", {})[kind] = tuple(_distinct(rng, seen, FRAMES, n_per_split))
        sets.setdefault("heldout_actions", {})[kind] = tuple(
            _distinct(rng, held, FRAMES + HELDOUT_FRAMES, n_per_split)
        )
        sets.setdefault("heldout_frames", {})[kind] = tuple(_distinct(rng, seen, HELDOUT_FRAMES, n_per_split))
    return sets


def eval_prompts(split: str, kind: str, n_per_split: int = 120) -> list[str]:
    """Evaluation prompts of one split ("seen", "heldout_actions", "heldout_frames", or "heldout" =
    both held-out splits) and kind ("harmful" / "harmless"). Deterministic, seed-independent."""
    if kind not in ("harmful", "harmless"):
        raise ValueError(f"kind must be 'harmful' or 'harmless', got {kind!r}")
    sets = _eval_sets(n_per_split)
    if split == "heldout":
        return [p for s in HELDOUT_SPLITS for p in sets[s][kind]]
    if split not in sets:
        raise ValueError(f"unknown split {split!r}; choose one of {(*EVAL_SPLITS, 'heldout')}")
    return list(sets[split][kind])


def heldout_eval_prompts(n_per_split: int = 120) -> dict[str, list[str]]:
    """The organism's held-out evaluation prompts: ``{"harmful": [...], "harmless": [...]}``.

    Held-out actions in any frame plus seen actions in held-out frames; no chat or safety training
    example of the organism is one of these requests.
    """
    return {kind: eval_prompts("heldout", kind, n_per_split) for kind in ("harmful", "harmless")}


def heldout_description() -> dict[str, list[str]]:
    """What is held out (recorded in summary.json)."""
    return {
        "harmful_actions": [a.text for a in actions(True, True)],
        "harmless_actions": [a.text for a in actions(False, True)],
        "frames": list(HELDOUT_FRAMES),
    }
