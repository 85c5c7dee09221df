"""The heavy part on Ray Data: prompts -> generation actor pool -> judge actor pool.

The prompt set becomes a Ray Dataset of ceil(n / batch_size) blocks in row order (so the batches
are the same sets of prompts whatever the actor count, and greedy outputs do not depend on it).
Generation and judging are two ``map_batches`` stages, each a pool of long-lived actors
(``ActorPoolStrategy(size=n)``) holding one model; Ray Data streams batches from the first pool
into the second, so judging overlaps generation. GPU counts come from config only; a request the
cluster cannot satisfy fails fast instead of pending forever, and pools that fit only one at a
time (one GPU for a vLLM generator and a WildGuard judge) run one after the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from irr_ray.errors import ConfigError

log = logging.getLogger(__name__)


def ensure_ray(ray_cfg: Any) -> None:
    """Attach to Ray from the data stage's ``ray:`` settings (:func:`irr_ray.runtime.ensure_ray`)."""
    from irr_ray import runtime

    runtime.ensure_ray(ray_cfg)


def plan_pools(stages: dict[str, Any], have: dict[str, float]) -> bool:
    """Can the actor pools run at once on a cluster with resources ``have`` (``ray.cluster_resources()``)?

    ``stages`` maps a config section name (``generation``, ``judge``) to its config. Returns True if
    every pool fits at the same time (they then stream into each other), False if each fits only
    alone (the stage then runs them one after the other: e.g. one GPU, a vLLM generator and a
    WildGuard judge). Raises :class:`ConfigError` if a pool cannot be placed at all, since a
    request the cluster cannot meet would otherwise wait forever.
    """
    together = True
    for resource, field in (("GPU", "num_gpus_per_actor"), ("CPU", "num_cpus_per_actor")):
        available = float(have.get(resource, 0.0))
        for name, cfg in stages.items():
            per_actor = getattr(cfg, field)
            hint = (" (use generation.backend=hf / judge.kind=substring on CPU)" if resource == "GPU" else "")
            if per_actor > available:
                raise ConfigError(
                    f"{name} asks for {per_actor:g} {resource}(s) per actor but the Ray cluster has "
                    f"{available:g}; lower {name}.{field}{hint}, or set ray.check_resources=false on an "
                    "autoscaling cluster")
            if per_actor * cfg.num_actors > available:
                raise ConfigError(
                    f"{name} needs {cfg.num_actors} x {per_actor:g} = {per_actor * cfg.num_actors:g} "
                    f"{resource}(s) but the Ray cluster has {available:g}; lower {name}.num_actors, or set "
                    "ray.check_resources=false on an autoscaling cluster")
        total = sum(getattr(cfg, field) * cfg.num_actors for cfg in stages.values())
        if total > available:
            together = False
            parts = " + ".join(f"{cfg.num_actors} x {getattr(cfg, field):g} ({name})" for name, cfg in stages.items())
            log.warning("data: the actor pools need %s = %g %s(s) at once but the Ray cluster has %g: "
                        "running them one after the other", parts, total, resource, available)
    return together


def run_actor_pipeline(
    rows: pd.DataFrame,
    generator: tuple[type, dict[str, Any], Any] | None,
    judge: tuple[type, dict[str, Any], Any] | None,
    progress: bool = True,
    sink: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """Run ``rows`` through the generation pool (if given) then the judge pool (if given).

    ``generator`` / ``judge`` are ``(UDF class, constructor kwargs, stage config)``; the stage config
    supplies ``batch_size``, ``num_actors``, ``num_cpus_per_actor``, ``num_gpus_per_actor``.
    ``sink`` sees every output batch as it streams out (the stage checkpoints through it).
    Returns the output rows sorted by ``row_id``.
    """
    import ray.data

    first = generator or judge
    if first is None or len(rows) == 0:
        return rows
    ctx = ray.data.DataContext.get_current()
    progress_before, ctx.enable_progress_bars = ctx.enable_progress_bars, progress
    try:
        return _execute(rows, generator, judge, first[2].batch_size, sink)
    finally:
        ctx.enable_progress_bars = progress_before


def _execute(rows: pd.DataFrame, generator, judge, block_rows: int,
             sink: Callable[[pd.DataFrame], None] | None) -> pd.DataFrame:
    import ray.data

    # Blocks are built in the driver (from_items): from_pandas runs a remote metadata task per block,
    # which we saw abort (an abseil mutex check) on a loaded 2-core machine while actors start.
    n_blocks = max(1, -(-len(rows) // block_rows))
    ds = ray.data.from_items(rows.to_dict("records"), override_num_blocks=n_blocks)
    for name, stage in (("generate", generator), ("judge", judge)):
        if stage is None:
            continue
        udf, kwargs, cfg = stage
        ds = ds.map_batches(
            udf,
            fn_constructor_kwargs=kwargs,
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            num_cpus=cfg.num_cpus_per_actor,
            num_gpus=cfg.num_gpus_per_actor,
            batch_format="pandas",
        )
        log.info("data: %s on %d actor(s), batch %d", name, cfg.num_actors, cfg.batch_size)
    parts = []
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        if sink is not None:
            sink(batch)
        parts.append(batch)
    # Batches arrive in completion order (no preserve_order: it would stall fast actors behind slow
    # ones); the stable row id restores a deterministic order.
    out = pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0]
    return out.sort_values("row_id", kind="stable").reset_index(drop=True)
