"""The attack suite: every attack of the field, run the same way on every model.

``dim`` is the method's iterated difference-of-means ablation (:mod:`irr_ray.attack.run`); the
others implement :class:`irr_ray.attack.suite.base.SuiteAttack` and run through
:mod:`irr_ray.attack.suite.runner`. The strongest attack decides a model's verdict
(:func:`irr_ray.core.verdict.combine_verdicts`).
"""

from __future__ import annotations

import importlib

# name -> "module:class" (imported on use, so a study that does not run an attack never imports it)
ATTACKS: dict[str, str | None] = {
    "dim": None,  # the method's attack: irr_ray.attack.run.attack_model
    "orthogonalize": "irr_ray.attack.suite.orthogonalize:OrthogonalizeAttack",
    "rdo": "irr_ray.attack.suite.rdo:RDOAttack",
    "optuna_abliteration": "irr_ray.attack.suite.optuna_abliteration:OptunaAbliterationAttack",
    "finetune": "irr_ray.attack.suite.finetune:FinetuneAttack",
}
ATTACK_NAMES = tuple(ATTACKS)


def attack_class(name: str):
    """The :class:`~irr_ray.attack.suite.base.SuiteAttack` subclass registered as ``name``."""
    target = ATTACKS.get(name)
    if target is None:
        raise ValueError(f"unknown suite attack {name!r}; choose one of {', '.join(n for n in ATTACKS if ATTACKS[n])}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
