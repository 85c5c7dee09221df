"""Fixtures for the judge tests: the organism's WildGuard-format judge, built once.

The judge reads nothing of the organism build (it is a function of the templates, the seed and the
thread count), so it is taken from the test organism (``.cache/organism-test/judge``) when that build
has one; otherwise it is trained once (≈ 1 min) into ``.cache/organism-judge-test/<key>/`` — the key
hashes the code that decides what gets built — and reused by later runs. The organism is never rebuilt
for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_ORGANISM = REPO / ".cache" / "organism-test"
JUDGE_CACHE = REPO / ".cache" / "organism-judge-test"
_SOURCES = ("irr_ray/organism/judge.py", "irr_ray/organism/tokenizer.py", "irr_ray/organism/prompts.py",
            "irr_ray/organism/vocab/templates.py", "irr_ray/judges/wildguard.py")


def _judge_key() -> str:
    import hashlib

    import torch
    import transformers

    h = hashlib.sha256(f"{torch.__version__} {transformers.__version__}".encode())
    for name in _SOURCES:
        h.update((REPO / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def organism_judge() -> tuple[Path, dict]:
    """(judge directory, its summary) for seed 0 with one torch thread."""
    import torch

    from irr_ray.organism.judge import JUDGE_DIR, build_judge
    from irr_ray.utils.files import atomic_dir

    existing = TEST_ORGANISM / JUDGE_DIR
    summary_file = TEST_ORGANISM / "summary.json"
    if (existing / "config.json").is_file() and summary_file.is_file():
        summary = json.loads(summary_file.read_text()).get("judge")
        if summary:
            return existing, summary
    root = JUDGE_CACHE / _judge_key()
    if not (root / "judge.json").is_file():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with atomic_dir(root) as tmp:
                summary = build_judge(tmp, seed=0)
                (tmp / "judge.json").write_text(json.dumps(summary, indent=1))
        finally:
            torch.set_num_threads(threads)
    return root / JUDGE_DIR, json.loads((root / "judge.json").read_text())
