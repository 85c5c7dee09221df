"""One model, end to end: load, K = 0 evaluation, the iterated attack, results written atomically.

``<out>/`` (the result; written at once when everything is done, so its presence means finished):
``attack.json`` (design.md contract), ``directions.safetensors`` ([K, D] unit rows), ``k0.json``
(K = 0 behaviour + probes), ``attack_log.json`` (stop reason, refusal tokens, prompt-set sizes,
timings, example replies per K). ``<out>/../.<name>.progress/`` holds per-K progress while the
attack runs; a rerun resumes from it, and a rerun after success does nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.behaviour import RefusalRates
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.evaluate import evaluate_k0, make_evaluator
from irr_ray.attack.iterated import progress_key, run_iterated_attack
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.config import config_dict, stable_hash
from irr_ray.core.directions import save_directions
from irr_ray.models.loading import load_model, load_tokenizer
from irr_ray.utils.files import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

ATTACK_JSON, DIRECTIONS, K0_JSON, LOG_JSON = "attack.json", "directions.safetensors", "k0.json", "attack_log.json"


def resolve_device(cfg: AttackConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def model_fingerprint(model_path: str) -> str:
    """Cheap identity of a model directory (paths, sizes, mtimes): keys resumable progress."""
    p = Path(model_path)
    if not p.is_dir():
        return model_path
    files = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    return stable_hash({"path": str(p.resolve()), "files": files})


def _load(model_path: str, cfg: AttackConfig) -> tuple[Any, Any]:
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.resources.cpu)))
    model = load_model(model_path, device=resolve_device(cfg), dtype=cfg.dtype)
    model.requires_grad_(False)
    return model, load_tokenizer(model_path)


def evaluate_model(model_path: str, data_dir: str | Path, cfg: AttackConfig, out_dir: str | Path,
                   judge_model: str | None = None) -> dict[str, Any]:
    """``irr-ray eval``: K = 0 behaviour + probes → ``<out_dir>/k0.json`` (returned)."""
    prompts = load_prompt_sets(data_dir, cfg)
    model, tokenizer = _load(model_path, cfg)
    evaluator, judge = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg, judge_model)
    _, doc = evaluate_k0(model, tokenizer, model_path, prompts, cfg, evaluator, judge)
    write_json_atomic(Path(out_dir) / K0_JSON, {**doc, "config": config_dict(cfg)})
    return doc


def _rates_from_k0(doc: dict[str, Any]) -> RefusalRates:
    return RefusalRates(doc["harmful_refused"], doc["harmful_n"], doc["harmless_refused"], doc["harmless_n"],
                        doc.get("judge_parse_errors", 0), doc.get("examples", {}))


def attack_model(model_path: str, data_dir: str | Path, cfg: AttackConfig, out_dir: str | Path,
                 judge_model: str | None = None, force: bool = False) -> dict[str, Any]:
    """K = 0 evaluation then the attack; returns ``attack.json``'s content (read back when ``out_dir``
    already holds a finished result and ``force`` is off)."""
    out = Path(out_dir).resolve()
    if (out / ATTACK_JSON).is_file() and not force:
        log.info("%s exists: attack already finished", out / ATTACK_JSON)
        return json.loads((out / ATTACK_JSON).read_text())
    work = out.parent / f".{out.name}.progress"
    t0 = time.perf_counter()
    prompts = load_prompt_sets(data_dir, cfg)
    model, tokenizer = _load(model_path, cfg)
    evaluator, judge = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg, judge_model)
    key = model_fingerprint(model_path)

    k0_path = work / K0_JSON
    k0_doc = json.loads(k0_path.read_text()) if k0_path.is_file() else None
    if k0_doc is None or k0_doc.get("progress_key") != progress_key(key, cfg):
        _, k0_doc = evaluate_k0(model, tokenizer, model_path, prompts, cfg, evaluator, judge)
        k0_doc.update(progress_key=progress_key(key, cfg), config=config_dict(cfg))
        write_json_atomic(k0_path, k0_doc)

    result = run_iterated_attack(model, tokenizer, prompts, cfg, evaluator, work_dir=work,
                                 k0=_rates_from_k0(k0_doc), model_key=key)
    local = Path(model_path).expanduser()
    doc = result.to_json(str(local.resolve()) if local.exists() else model_path, cfg)
    log_doc = {"model": model_path, "stop_reason": result.stop_reason, "refusal_tokens": result.refusal_tokens,
               "implementation": cfg.implementation, "device": resolve_device(cfg), "judge": judge,
               "prompt_sets": prompts.sizes(), "timings": result.timings, "wall_s": time.perf_counter() - t0,
               "examples": result.examples}
    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / ATTACK_JSON, doc)
        save_directions(tmp / DIRECTIONS, result.directions.float(),
                        {"model": model_path, "layers": json.dumps([r["layer"] for r in doc["curve"][1:]]),
                         "positions": json.dumps([r["position"] for r in doc["curve"][1:]])})
        write_json_atomic(tmp / K0_JSON, {**{k: v for k, v in k0_doc.items() if k != "progress_key"},
                                           "config": config_dict(cfg)})
        write_json_atomic(tmp / LOG_JSON, log_doc)
    shutil.rmtree(work, ignore_errors=True)
    return doc
