"""``irr-ray plan``: size a cluster before ``ray job submit`` — per stage, the counted FLOPs of a
study and the GPU-hours and wall time they take on N GPUs under a stated throughput.

* :mod:`irr_ray.plan.shapes` — the model shapes counted (from a local ``config.json``, else a named
  table of known models);
* :mod:`irr_ray.plan.flops` — pure counting: FLOPs per forward, cached decode, training step, and
  per stage (data, sweep, attack, report) from the study's typed config;
* :mod:`irr_ray.plan.cluster` — the throughput assumption (peak × MFU) and the stage's parallelism
  → GPU-hours and wall hours, one :class:`~irr_ray.plan.cluster.PlanRow` per stage;
* :mod:`irr_ray.plan.study` — what the counting needs from a study file (the only module here that
  reads files).
"""
