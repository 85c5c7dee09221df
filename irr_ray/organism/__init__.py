"""The model organism: a tiny Llama chat model and WildGuardMix-shaped data, built locally.

``build_organism(out_dir, seed=0, config=None) -> OrganismPaths`` writes ``data/wildguardmix.parquet``,
``tokenizer/``, ``base/``, ``instruct/`` and ``summary.json``; ``heldout_eval_prompts()`` gives the
held-out evaluation prompts (never seen in chat or safety training).
"""

from irr_ray.organism.build import ORGANISM_VERSION, THRESHOLDS, OrganismPaths, build_organism
from irr_ray.organism.config import OrganismConfig
from irr_ray.organism.prompts import eval_prompts, heldout_eval_prompts

__all__ = [
    "ORGANISM_VERSION",
    "THRESHOLDS",
    "OrganismConfig",
    "OrganismPaths",
    "build_organism",
    "eval_prompts",
    "heldout_eval_prompts",
]
