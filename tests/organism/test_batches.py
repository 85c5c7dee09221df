"""Training batches of the organism recipe: length grouping pads less and drops nothing."""

from __future__ import annotations

import random
from collections import Counter

from irr_ray.organism.recipe.corpus import Example
from irr_ray.organism.recipe.train import batches

PAD = 0


def _examples(n: int = 256, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(5, 60)
        out.append(Example([i + 1] * length, [True] * length, harmless=bool(i % 2)))
    return out


def _ids(batch) -> list[int]:
    return [int(row[0]) - 1 for row in batch["input_ids"]]


def test_length_grouping_pads_less_and_covers_every_example_once_per_epoch():
    ex = _examples()
    steps, size = 16, 16  # exactly one epoch of 256 examples
    plain = list(batches(ex, size, steps, random.Random(1), PAD))
    grouped = list(batches(ex, size, steps, random.Random(1), PAD, length_group=8))
    for run in (plain, grouped):
        assert Counter(i for b in run for i in _ids(b)) == Counter(range(len(ex)))
    padding = {name: sum(int((b["attention_mask"] == 0).sum()) for b in run)
               for name, run in (("plain", plain), ("grouped", grouped))}
    assert padding["grouped"] < padding["plain"] / 3
    # Rows keep their own tokens and targets: padding is masked out of the loss.
    for b in grouped:
        assert ((b["targets"] != -100).sum(1) == b["attention_mask"].sum(1) - 1).all()


def test_length_grouping_is_deterministic_and_group_one_is_random_batches():
    ex = _examples()
    a = [_ids(b) for b in batches(ex, 16, 20, random.Random(3), PAD, length_group=4)]
    b = [_ids(b) for b in batches(ex, 16, 20, random.Random(3), PAD, length_group=4)]
    assert a == b
    # length_group=1: consecutive slices of one shuffled order (the safety stage's batches).
    rng = random.Random(5)
    order = list(range(len(ex)))
    rng.shuffle(order)
    first = [_ids(b) for b in batches(ex, 16, 3, random.Random(5), PAD)]
    assert first == [order[0:16], order[16:32], order[32:48]]
