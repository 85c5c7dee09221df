"""The one way every stage starts or joins Ray.

:func:`ensure_ray` reads a study's ``ray:`` settings (any object with ``address`` and optionally
``num_cpus`` / ``num_gpus``: :class:`irr_ray.train.config.RaySettings`, the data stage's
``RayInitConfig``):

* Ray already initialised in this process (a test, a notebook, an outer stage): keep it;
* ``address`` or the ``RAY_ADDRESS`` environment variable (set by ``ray job submit``): connect to
  that cluster, with worker logs forwarded to the driver;
* otherwise: start a local instance with ``num_cpus`` / ``num_gpus`` and no dashboard.

It returns True when this call started (or connected) Ray, i.e. when the caller owns the session;
:func:`ray_session` is the context manager that shuts an owned session down afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

RAY_ADDRESS_ENV = "RAY_ADDRESS"


def ray_address(settings: Any) -> str | None:
    """The cluster to join: ``settings.address``, else ``$RAY_ADDRESS``, else None (start locally)."""
    return getattr(settings, "address", None) or os.environ.get(RAY_ADDRESS_ENV) or None


def ensure_ray(settings: Any, log_to_driver: bool = True) -> bool:
    """Start or join Ray from the study's ``ray:`` settings (module docstring); True if this call did."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(settings)
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(num_cpus=getattr(settings, "num_cpus", None), num_gpus=getattr(settings, "num_gpus", None),
                 include_dashboard=False, log_to_driver=log_to_driver)
    return True


@contextlib.contextmanager
def ray_session(settings: Any, log_to_driver: bool = True) -> Iterator[bool]:
    """:func:`ensure_ray` for the block; a session started here is shut down when it ends."""
    started = ensure_ray(settings, log_to_driver=log_to_driver)
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()
