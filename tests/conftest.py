"""Suite-wide fixtures, and the hooks that run the suite on two cores (``make test``: ``pytest -n 2
--dist loadgroup``; the plan is in ``tests/parallel.py``). A plain ``pytest`` run is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import parallel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def organism_dir() -> Path:
    """The DEFAULT organism (seed 0), built once into ``<repo>/.cache/organism-test/`` and reused by
    every test and every later run (the build is cached by content hash; a few minutes when cold)."""
    from irr_ray.organism import build_organism

    return build_organism(REPO / ".cache" / "organism-test", seed=0).root


@pytest.fixture(scope="session")
def organism_judge(organism_dir: Path) -> tuple[Path, dict]:
    """(directory, summary) of the test organism's WildGuard-format judge, as its build trains it
    (``<organism>/judge``; held-out agreement in ``summary.json``'s ``judge``)."""
    import json

    from irr_ray.organism.judge import JUDGE_DIR

    return Path(organism_dir) / JUDGE_DIR, json.loads((Path(organism_dir) / "summary.json").read_text())["judge"]


@pytest.fixture(autouse=True, scope="module")
def _ray_down_after_each_module():
    """Tests that drive a stage in-process leave the Ray they started running (as a user's
    session would); each test module starts from no Ray, so its own `ray.init` is the one that counts."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)  # two workers on two cores; a test that wants more sets it
    elif config.getoption("numprocesses", None):
        parallel.ray_token_before_workers()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("loadgroup", False):  # an xdist worker's collection under --dist loadgroup
        parallel.order_items(items)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own; a hook of xdist's only
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") == "loadgroup":
        return parallel.make_scheduler(config, log)
    return None
