"""What the plan counts, read from a study file: its typed config, the model shapes (a local or
cached ``config.json``, else :data:`irr_ray.plan.shapes.KNOWN_SHAPES`), the rows its data source
holds and the prompt length assumed. The only module of :mod:`irr_ray.plan` that reads files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from irr_ray.errors import ConfigError
from irr_ray.plan.flops import (
    StageCount,
    TokenAssumptions,
    attack_stage,
    data_stage,
    report_stage,
    sweep_stage,
)
from irr_ray.plan.shapes import ModelShape, known_shape
from irr_ray.study_config import StudyConfig, load_study, resolve_study

WILDGUARD_HUB_ID = "allenai/wildguard"  # judge.engine = wildguard loads this


@dataclass(frozen=True)
class DatasetFacts:
    """Rows a hub data set holds and the chat-formatted prompt length assumed for it."""

    rows: int
    prompt_tokens: int
    source: str


KNOWN_DATASETS: dict[str, DatasetFacts] = {
    # 86,759 rows: the WildGuardMix dataset card (wildguardtrain). Only non-adversarial rows with a
    # label reach generation (irr_ray.data.prepare), so the count is an upper bound. 96 tokens: an
    # assumption (the data set is gated, not measured here) — a short request plus Llama-3.2's chat
    # template with its default system header (≈ 30 tokens).
    "allenai/wildguardmix": DatasetFacts(86_759, 96, "WildGuardMix dataset card (wildguardtrain); prompt length assumed"),
}
# The organism's rows: mean chat-formatted length of its non-adversarial labelled prompts with its
# word-level tokenizer (measured on seed 0: 20.3 tokens, 13-30).
ORGANISM_PROMPT_TOKENS = 20


@dataclass(frozen=True)
class StudyPlanInputs:
    """Everything the counting needs from one study file."""

    study: StudyConfig
    source: ModelShape
    data_judge: ModelShape | None
    attack_judge: ModelShape | None
    available_rows: int
    rows_source: str
    tokens: TokenAssumptions
    models_attacked: int


def _cached_config(model: str) -> Path | None:
    """``config.json`` of hub id ``model`` in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    hit = try_to_load_from_cache(model, "config.json")
    return Path(hit) if isinstance(hit, str) else None


def model_shape(model: str, organism_dir: str | None = None) -> ModelShape:
    """A model's shape: its ``config.json`` where it is local (or cached), the organism's build
    config for an organism model not built yet, else the table of known shapes."""
    p = Path(model).expanduser()
    local = p.is_dir() or p.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1
    config = (p / "config.json") if local else _cached_config(model)
    if config is not None and config.is_file():
        return ModelShape.from_config(model, json.loads(config.read_text()))
    if organism_dir is not None and p.parent == Path(organism_dir) and p.name in ("instruct", "base", "judge"):
        return unbuilt_organism_shape(p.name)
    if local:
        raise ConfigError(f"model {model}: no config.json there (build or download it first)")
    return known_shape(model)


def unbuilt_organism_shape(part: str) -> ModelShape:
    """An organism model not built yet: the shape its build will give (the organism's default
    build config for ``instruct`` / ``base``, the judge's fixed architecture for ``judge``)."""
    if part == "judge":
        from irr_ray.organism.judge import JudgeConfig, build_judge_tokenizer

        j = JudgeConfig()
        return ModelShape(name="organism judge (not built: its fixed shape)", hidden_size=j.hidden_size,
                          intermediate_size=j.intermediate_size, num_hidden_layers=j.num_layers,
                          num_attention_heads=j.num_heads, num_key_value_heads=j.num_heads,
                          head_dim=j.hidden_size // j.num_heads, vocab_size=len(build_judge_tokenizer()))
    from irr_ray.organism.config import OrganismConfig
    from irr_ray.organism.tokenizer import build_tokenizer

    m = OrganismConfig().model
    return ModelShape(name=f"organism {part} (not built: default shape)", hidden_size=m.hidden_size,
                      intermediate_size=m.intermediate_size, num_hidden_layers=m.num_layers,
                      num_attention_heads=m.num_heads, num_key_value_heads=m.num_heads,
                      head_dim=m.hidden_size // m.num_heads, vocab_size=len(build_tokenizer()))


def judge_shape(kind: str, engine: str, model: str, organism_dir: str | None) -> ModelShape | None:
    if kind != "wildguard":
        return None
    return model_shape(WILDGUARD_HUB_ID if engine == "wildguard" else model, organism_dir)


def source_rows(study: StudyConfig) -> tuple[int, str, int | None]:
    """(rows, where the number comes from, the prompt length known for the source or None)."""
    source = study.data.source
    if source in KNOWN_DATASETS:
        facts = KNOWN_DATASETS[source]
        return facts.rows, facts.source, facts.prompt_tokens
    organism = study.organism.dir if study.organism is not None else None
    p = Path(source or "").expanduser()
    if organism is not None and not p.exists() and p.is_relative_to(Path(organism)):
        from irr_ray.organism.config import OrganismConfig

        return OrganismConfig().data.n_rows, "the organism's data (default build config)", ORGANISM_PROMPT_TOKENS
    if source and p.exists():
        from irr_ray.data.ingest import read_source

        table = read_source(str(p))
        known = ORGANISM_PROMPT_TOKENS if organism is not None and p.is_relative_to(Path(organism)) else None
        return len(table.frame), f"{p} (counted)", known
    raise ConfigError(f"data.source {source!r}: not a local file and not a known data set "
                      f"({', '.join(sorted(KNOWN_DATASETS))})")


def load_plan_inputs(path: str | Path, overrides: Sequence[str] = (), prompt_tokens: int | None = None) -> StudyPlanInputs:
    """The study file (with ``--set`` overrides) resolved as ``irr-ray run`` would, and the facts
    the counting needs. Nothing is written."""
    raw = load_study(path, overrides)
    study, _ = resolve_study(raw, raw.study_dir or ".")  # paths only: nothing is created
    org = study.organism.dir if study.organism is not None else None
    source = model_shape(str(study.source_model), org)
    rows, rows_source, known_tokens = source_rows(study)
    if prompt_tokens is not None and prompt_tokens < 1:
        raise ConfigError(f"--prompt-tokens must be >= 1, got {prompt_tokens}")
    if prompt_tokens is not None:
        tokens = TokenAssumptions(prompt_tokens, "--prompt-tokens")
    elif known_tokens is not None:
        tokens = TokenAssumptions(known_tokens, "organism, measured" if org else "assumed for the data set")
    else:
        raise ConfigError(f"data.source {study.data.source}: no prompt length known for it; pass --prompt-tokens")
    d, a = study.data.judge, study.attack.judge
    sweeps = "sweep" in study.stages
    models = (study.sweep.num_samples if sweeps else 0) + 1 + (1 if study.base_model else 0)
    return StudyPlanInputs(study=study, source=source, data_judge=judge_shape(d.kind, d.engine, d.model, org),
                           attack_judge=judge_shape(a.kind, a.engine, a.model, org), available_rows=rows,
                           rows_source=rows_source, tokens=tokens, models_attacked=models)


def stage_counts(inputs: StudyPlanInputs) -> list[StageCount]:
    """One :class:`StageCount` per GPU stage the study runs (organism: built on CPU, not counted)."""
    s, t = inputs.study, inputs.tokens
    counts = {
        "data": lambda: data_stage(s.data, inputs.source, inputs.data_judge, inputs.available_rows, t),
        "sweep": lambda: sweep_stage(s.data, s.train, s.sweep, inputs.source, inputs.available_rows, t),
        "attack": lambda: attack_stage(s.attack, inputs.source, inputs.attack_judge, inputs.models_attacked, t),
        "report": report_stage,
    }
    return [counts[stage]() for stage in s.stages if stage in counts]
