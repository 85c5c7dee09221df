"""How the suite runs on two cores: ``make test`` = ``pytest -n 2 --dist loadgroup tests``
(pytest-xdist, one worker per core); the hooks in ``tests/conftest.py`` call this module.

**Work units.** The controller hands out whole work units (:func:`work_unit` of a test's node id):
its module, so module fixtures are set up once, on one worker; or one of the groups below, which
share an expensive session fixture or must not run beside each other:

* ``vllm`` — every module that starts vLLM engines (:data:`VLLM_MODULES`: each engine reserves
  several GB, and ``tests/attack/test_vllm_eval.py`` checks that the system temp dir holds no
  engine checkpoint it did not have before): one worker runs them one after the other;
* :data:`SHARED_GROUPS` — modules sharing a session fixture that trains or runs a study.

The grouping is this scheduler's (:class:`SuiteScheduling`, ``pytest_xdist_make_scheduler``), not
``xdist_group`` marks: pytest 9.2's structured node ids drop the ``@group`` suffix those marks put on
a node id (pytest-xdist issue #1386), and the grouping would silently be lost.

**Order.** Units go out in collection order, which :func:`order_items` sets on each worker (both
collect the same items): the vLLM group first (its first test, the job-submit study, builds the
organism on a cold cache), then the units that do not need the organism (the other worker runs
them meanwhile; not :data:`BUILDS_OF_THEIR_OWN`), then the rest, the long ones first
(:data:`SLOW_FIRST`).

**Shared state.** The two workers share ``.cache/``: the organism and sentiment builds lock their
output (:func:`irr_ray.utils.files.build_once`), so the second worker waits for the first one's
build and reuses it. Each worker's ``ray.init()`` starts a local instance of its own: Ray joins an
existing one only through an address (``RAY_ADDRESS``, or the address file a ``ray start`` without
``--temp-dir`` writes; ``tests/e2e/local_head.py`` gives its head a temp dir of its own). Ray's token
file is written once before the workers start (:func:`ray_token_before_workers`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VLLM = "vllm"
# every module with a test marked `vllm`, and the organism-vllm study on a Ray head (vLLM actors)
VLLM_MODULES = (
    "tests/e2e/test_job_submit.py",  # first: the longest, and the one that builds the organism
    "tests/bench/test_data_vllm.py",
    "tests/data/test_vllm_stage.py",
    "tests/attack/test_vllm_eval.py",
    "tests/generation/test_vllm_cpu.py",
    "tests/judges/test_wildguard_vllm_cpu.py",
)
SHARED_GROUPS = {  # group -> module path prefixes
    "sentiment": ("tests/sentiment/",),  # sentiment_source, study_copy, sentiment_table
    "attack-study": ("tests/attack/test_attack_result.py", "tests/attack/test_taskgroup.py"),  # attacked_study
    "attack-suite": ("tests/attack/suite/",),  # make_context's loaded models
}
# Units without the organism that train with several threads of their own: they go with the units
# that need the organism, so the cold organism build (both cores) does not run beside them (measured:
# side by side the build took 483 s instead of 330 s and the sentiment set-up 505 s instead of 140 s).
BUILDS_OF_THEIR_OWN = ("sentiment",)
# Units that take a minute or more (a fresh-clone `--durations` run), longest first; a unit not named
# here follows them in collection order. Only the wall time depends on this list.
SLOW_FIRST = (
    "tests/e2e/test_ui.py",  # without the organism
    # the first unit with the organism waits for its build; sentiment (no organism) only after it
    "tests/e2e/test_fault_resume.py", "sentiment", "tests/reproduce/test_reproduce_e2e.py", "tests/train/test_sweep.py",
    "tests/data/test_stage.py", "attack-study", "attack-suite", "tests/data/test_organism.py",
    "tests/attack/test_equivalence.py", "tests/bench/test_stage.py",
)


def work_unit(nodeid: str) -> str:
    """The unit a test belongs to: ``vllm``, a :data:`SHARED_GROUPS` name, or its module's path."""
    path = nodeid.split("::")[0]
    if path in VLLM_MODULES:
        return VLLM
    return next((group for group, prefixes in SHARED_GROUPS.items() if path.startswith(prefixes)), path)


def order_items(items: list[pytest.Item]) -> None:
    """Sort ``items`` by unit (module docstring), in place; within a unit, the vLLM group in
    :data:`VLLM_MODULES` order, the others in collection order. A test marked ``vllm`` outside
    :data:`VLLM_MODULES` is an error: it would start engines beside the vLLM group."""
    stray = sorted({i.nodeid.split("::")[0] for i in items
                    if i.get_closest_marker("vllm") and work_unit(i.nodeid) != VLLM})
    if stray:
        raise pytest.UsageError(f"tests marked vllm outside tests/parallel.py's VLLM_MODULES: {stray}")
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(work_unit(item.nodeid), []).append(item)
    if VLLM in units:
        units[VLLM].sort(key=lambda item: VLLM_MODULES.index(item.nodeid.split("::")[0]))

    def rank(name: str) -> tuple[int, int]:
        if name == VLLM:
            return (0, 0)
        late = name in BUILDS_OF_THEIR_OWN or any("organism_dir" in item.fixturenames for item in units[name])
        return (2 if late else 1, SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST))

    items[:] = [item for name in sorted(units, key=rank) for item in units[name]]


def make_scheduler(config: pytest.Config, log):
    """xdist's ``loadgroup`` scheduler, with :func:`work_unit` as the scope of a test that has no
    ``xdist_group`` suffix, and the work queue in collection order."""
    from xdist.scheduler import LoadGroupScheduling

    class SuiteScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return work_unit(nodeid) if scope == nodeid else scope

    config.option.loadscopereorder = False  # keep order_items' order (xdist sorts by size otherwise)
    return SuiteScheduling(config, log)


def ray_token_before_workers() -> None:
    """A new local ``ray.init()`` turns Ray's token auth on and writes ``~/.ray/auth_token`` if it is
    missing. Two workers starting Ray at once on a fresh machine would both write it, and a cluster
    could start with the other worker's token: write it once, before the workers start."""
    if os.environ.get("RAY_AUTH_MODE") or (Path.home() / ".ray" / "auth_token").is_file():
        return
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    generate_and_save_token()
