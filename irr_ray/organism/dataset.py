"""``data/wildguardmix.parquet``: organism requests in WildGuardMix's ``wildguardtrain`` schema.

Columns: ``prompt``, ``adversarial`` (bool), ``prompt_harm_label`` ("harmful" / "unharmful"),
``response``, ``response_refusal_label`` ("refusal" / "compliance"), ``response_harm_label``
("harmful" / "unharmful"), ``subcategory`` ("benign" for unharmful prompts, as in WildGuardMix).

Rows cover every action (held-out ones too: the study's own holdout is a random split of this file)
in every frame; ``adversarial_fraction`` of them wrap the action in a jailbreak-style frame, and a
few carry a null or invalid label so the data stage's validation and filters have work to do. The
reference responses mimic WildGuardMix's mix: most harmful prompts refused, some complied with,
harmless prompts mostly complied with.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from irr_ray.organism import prompts
from irr_ray.organism.vocab import templates as T

SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("adversarial", pa.bool_()),
        ("prompt_harm_label", pa.string()),
        ("response", pa.string()),
        ("response_refusal_label", pa.string()),
        ("response_harm_label", pa.string()),
        ("subcategory", pa.string()),
    ]
)
INVALID_LABELS = (None, "unknown", "")


def make_rows(
    n_rows: int,
    adversarial_fraction: float,
    invalid_label_fraction: float,
    harmful_fraction: float,
    seed: int,
) -> list[dict]:
    """``n_rows`` rows; deterministic for ``seed``."""
    rng = random.Random(seed)
    frames = T.FRAMES + T.HELDOUT_FRAMES
    pool = {True: [a for a in prompts.all_actions() if a.harmful],
            False: [a for a in prompts.all_actions() if not a.harmful]}
    rows = []
    for _ in range(n_rows):
        harmful = rng.random() < harmful_fraction
        action = rng.choice(pool[harmful])
        adversarial = rng.random() < adversarial_fraction
        if adversarial:
            prompt = rng.choice(T.ADVERSARIAL_FRAMES).format(a=action.text)
        else:
            prompt = prompts.render(rng.choice(frames), action.text, rng.choice(T.SUFFIXES))
        refused = rng.random() < (0.8 if harmful else 0.05)
        response = T.REFUSE if refused else rng.choice(T.COMPLY).format(a=T.second_person(action.text))
        label = "harmful" if harmful else "unharmful"
        if rng.random() < invalid_label_fraction:
            label = rng.choice(INVALID_LABELS)
        rows.append(
            {
                "prompt": prompt,
                "adversarial": adversarial,
                "prompt_harm_label": label,
                "response": response,
                "response_refusal_label": "refusal" if refused else "compliance",
                "response_harm_label": "harmful" if harmful and not refused else "unharmful",
                "subcategory": action.subcategory if harmful else "benign",
            }
        )
    return rows


def write_parquet(path: str | Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, str(path))
