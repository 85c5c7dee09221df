"""The reproduction study (``irr-ray reproduce``, ``make reproduce``): the method's conditions at
its settings, over organism seeds × training seeds, plus positive-control defenses and variants
(e.g. the method's own unbalanced micro-batch of 2), every model through the whole attack suite.

Why a grid of ordinary studies rather than a new stage: each organism seed is one study directory
that ``irr-ray run`` could have produced (its sweep a fixed grid of named presets instead of a
search), so the UI, the report and ``--resume`` work on it unchanged, and the seeds are independent.

* :mod:`irr_ray.reproduce.config` — ``ReproduceConfig`` (``experiments/reproduce.yaml``) and its checks;
* :mod:`irr_ray.reproduce.grid` — the config → one study config per organism seed + ``grid.json``;
* :mod:`irr_ray.reproduce.runner` — runs the sub-studies resumably, then the claims hook.
"""
