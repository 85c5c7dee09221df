"""Fixtures of the attack-suite tests: an :class:`AttackContext` on the real organism.

``make_context(role)`` loads the organism's ``instruct`` (the original, which refuses) or ``base``
model with small but real prompt sets from the organism-derived study dataset
(:func:`tests.attack.study_data.fixture_study_dataset`, the data stage's stand-in), on 1 thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.attack.suite.base import AttackContext
from irr_ray.models.loading import load_model, load_tokenizer
from tests.attack.conftest import SMALL_ATTACK


@pytest.fixture(scope="session")
def make_context(organism_dir: Path, study_data: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    cache: dict[str, AttackContext] = {}

    def make(role: str = "instruct", **overrides) -> AttackContext:
        key = f"{role}:{sorted(overrides.items())}"
        if key not in cache:
            cfg = AttackConfig.model_validate({**SMALL_ATTACK, **overrides})
            path = str(Path(organism_dir) / role)
            model = load_model(path, device="cpu", dtype="float32").requires_grad_(False).eval()
            tok = load_tokenizer(path)
            _, ids = refusal_token_ids(model, tok, cfg.refusal_tokens)
            cache[key] = AttackContext(model=model, tokenizer=tok, prompts=load_prompt_sets(study_data, cfg),
                                       cfg=cfg, refusal_ids=ids, seed=cfg.seed,
                                       work_dir=tmp_path_factory.mktemp(f"suite_{role}"),
                                       base_model=str(Path(organism_dir) / "base"), data_dir=study_data)
        return cache[key]

    return make
