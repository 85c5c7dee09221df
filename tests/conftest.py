"""Suite-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def organism_dir() -> Path:
    """The DEFAULT organism (seed 0), built once into ``<repo>/.cache/organism-test/`` and reused by
    every test and every later run (the build is cached by content hash; a few minutes when cold)."""
    from irr_ray.organism import build_organism

    return build_organism(REPO / ".cache" / "organism-test", seed=0).root
