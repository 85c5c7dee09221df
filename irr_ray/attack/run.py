"""One model, end to end: load, K = 0 evaluation, the iterated attack, results written atomically.

``<out>/`` (the result; written at once when everything is done, so its presence means finished):
``attack.json`` (:class:`irr_ray.contracts.AttackDoc`: K-curve, attack_rank, verdict),
``directions.safetensors`` ([K, D] unit rows), ``k0.json`` (:class:`irr_ray.contracts.K0Doc`),
``attack_log.json`` (stop reason, refusal tokens, source model, NLL bound, prompt-set sizes,
timings, example replies per K with their outcomes). With a source model (the model a checkpoint
was trained from) the verdict is measured against the source's K=0 harmless refusal and reply
coherence is scored by the source model with the source's calibrated bound; its K=0 evaluation is
cached in the progress directory. ``<out>/../.<name>.progress/`` holds per-K progress while the
attack runs; a rerun resumes from it, and a rerun after success does nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from irr_ray.attack.config import AttackConfig
from irr_ray.attack.evaluate import evaluate_k0, make_evaluator
from irr_ray.attack.iterated import progress_key, run_iterated_attack
from irr_ray.attack.prompts import load_prompt_sets
from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import AttackDoc, K0Doc
from irr_ray.core.directions import save_directions
from irr_ray.models.loading import load_model, load_tokenizer
from irr_ray.utils.files import atomic_dir, write_json_atomic

log = logging.getLogger(__name__)

ATTACK_JSON, DIRECTIONS, K0_JSON, LOG_JSON = "attack.json", "directions.safetensors", "k0.json", "attack_log.json"


def resolve_device(cfg: AttackConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def model_identity_key(model_path: str) -> str:
    """Cheap identity of a model directory for resume keys (path, file sizes and mtimes — not a
    content hash; the data stage's :func:`irr_ray.data.stage.model_content_hash` is one)."""
    p = Path(model_path)
    if not p.is_dir():
        return model_path
    files = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    return stable_hash({"path": str(p.resolve()), "files": files})


def _load(model_path: str, cfg: AttackConfig) -> tuple[Any, Any]:
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.resources.cpu)))
    model = load_model(model_path, device=resolve_device(cfg), dtype=cfg.dtype)
    model.requires_grad_(False)
    # Fail before any generation: an unsupported family raises here (one line naming the model
    # type and the module paths looked for), and one matched only by structure is verified on the
    # loaded weights (irr_ray.core.hooks.check_write_sites) instead of after the K = 0 pass.
    from irr_ray.models.families import get_layout  # local: this edit stays inside _load

    get_layout(model)
    return model, load_tokenizer(model_path)


@dataclass(frozen=True)
class SourceBaseline:
    """The source model a checkpoint was trained from, as the verdict and the degenerate rule need
    it: its path (the reference that scores reply NLLs), its K=0 harmless refusal and NLL bound."""

    path: str
    refusal_harmless: float
    nll_bound: float

    @classmethod
    def from_k0(cls, path: str, doc: K0Doc) -> SourceBaseline:
        return cls(path, doc.row.refusal_harmless, doc.nll_bound)


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.resolve() == pb.resolve() if pa.exists() and pb.exists() else a == b


def evaluate_k0_doc(model_path: str, data_dir: str | Path, cfg: AttackConfig, judge_model: str | None = None,
                    source: SourceBaseline | None = None) -> K0Doc:
    """K = 0 behaviour + probes of one model (its replies' NLLs scored by ``source``'s model when given)."""
    prompts = load_prompt_sets(data_dir, cfg)
    model, tokenizer = _load(model_path, cfg)
    reference, bound = _reference(model_path, cfg, source)
    evaluator, judge = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg, judge_model, reference, bound)
    try:
        _, doc = evaluate_k0(model, tokenizer, model_path, prompts, cfg, evaluator, judge)
    finally:
        evaluator.close()  # a vLLM engine (generation.backend=vllm) is released at once
    doc.config = config_dict(cfg)
    return doc


def evaluate_model(model_path: str, data_dir: str | Path, cfg: AttackConfig, out_dir: str | Path,
                   judge_model: str | None = None, source: SourceBaseline | None = None) -> dict[str, Any]:
    """``irr-ray eval``: K = 0 behaviour + probes → ``<out_dir>/k0.json`` (returned)."""
    doc = evaluate_k0_doc(model_path, data_dir, cfg, judge_model, source)
    doc.write(Path(out_dir) / K0_JSON)
    return doc.to_json()


def _reference(model_path: str, cfg: AttackConfig, source: SourceBaseline | None) -> tuple[Any, float | None]:
    """(reference model, NLL bound) for reply NLLs: the source's, or (None, None) = the model itself."""
    if source is None or _same_model(source.path, model_path):
        return None, None
    reference, _ = _load(source.path, cfg)
    return reference, source.nll_bound


def progress_dir(out: Path) -> Path:
    """Where the attack writing ``out`` keeps its per-K progress (and its K=0 evaluation)."""
    return out.parent / f".{out.name}.progress"


def source_baseline(source_model: str, data_dir: str | Path, cfg: AttackConfig, path: Path,
                    judge_model: str | None = None) -> SourceBaseline:
    """The source model's K=0 evaluation, cached in the ``k0.json``-shaped file ``path`` (keyed by
    model and config, like an attack's own K=0 progress, so the source's attack can reuse it)."""
    key = progress_key(model_identity_key(source_model), cfg)
    if path.is_file():
        doc = K0Doc.read(path)
        if doc.progress_key == key:
            return SourceBaseline.from_k0(source_model, doc)
    doc = evaluate_k0_doc(source_model, data_dir, cfg, judge_model)
    doc.progress_key = key
    doc.write(path)
    return SourceBaseline.from_k0(source_model, doc)


def _keep_suite_results(out: Path, tmp: Path) -> None:
    """The other attacks of the suite keep their results in subdirectories of the dim result
    (``attacks/<m>/<attack>/``): a dim rerun replacing ``out`` carries them over."""
    if out.is_dir():
        for child in out.iterdir():
            if child.is_dir():
                shutil.move(str(child), tmp / child.name)


def attack_model(model_path: str, data_dir: str | Path, cfg: AttackConfig, out_dir: str | Path,
                 judge_model: str | None = None, force: bool = False, source_model: str | None = None,
                 source: SourceBaseline | None = None) -> AttackDoc:
    """K = 0 evaluation then the attack; returns ``attack.json``'s document (read back when
    ``out_dir`` already holds a finished result and ``force`` is off). The verdict is measured
    against ``source`` (or ``source_model``, evaluated here first; default: the model itself)."""
    out = Path(out_dir).resolve()
    if (out / ATTACK_JSON).is_file() and not force:
        log.info("%s exists: attack already finished", out / ATTACK_JSON)
        return AttackDoc.read(out / ATTACK_JSON)
    work = progress_dir(out)
    t0 = time.perf_counter()
    prompts = load_prompt_sets(data_dir, cfg)
    model, tokenizer = _load(model_path, cfg)  # an unsupported model is refused here, before any work
    if source is None and source_model and not _same_model(source_model, model_path):
        source = source_baseline(source_model, data_dir, cfg, work / "source_k0.json", judge_model)
    key = model_identity_key(model_path)

    k0_path = work / K0_JSON
    k0_doc = K0Doc.read(k0_path) if k0_path.is_file() else None
    if k0_doc is not None and k0_doc.progress_key != progress_key(key, cfg):
        k0_doc = None
    reference, bound = _reference(model_path, cfg, source)
    evaluator, judge = make_evaluator(model, tokenizer, model_path, prompts.eval, cfg, judge_model, reference,
                                      bound if k0_doc is None else k0_doc.nll_bound)
    k0_s = 0.0
    try:
        if k0_doc is None:
            t_k0 = time.perf_counter()
            _, k0_doc = evaluate_k0(model, tokenizer, model_path, prompts, cfg, evaluator, judge)
            k0_doc.progress_key, k0_doc.config = progress_key(key, cfg), config_dict(cfg)
            k0_doc.write(k0_path)
            k0_s = time.perf_counter() - t_k0

        result = run_iterated_attack(model, tokenizer, prompts, cfg, evaluator, work_dir=work,
                                     k0=k0_doc.row.model_dump(exclude_none=True), model_key=key,
                                     source_refusal_harmless=None if source is None else source.refusal_harmless)
    finally:
        evaluator.close()  # one vLLM engine served every K (generation.backend=vllm); released here
    local = Path(model_path).expanduser()
    doc = result.document(str(local.resolve()) if local.exists() else model_path, cfg)
    log_doc = {"model": model_path, "stop_reason": result.stop_reason, "refusal_tokens": result.refusal_tokens,
               "implementation": cfg.implementation, "device": resolve_device(cfg), "judge": judge,
               "source_model": None if source is None else source.path,
               "nll_bound": k0_doc.nll_bound, "prompt_sets": prompts.sizes(), "timings": result.timings,
               "k0_s": k0_s, "wall_s": time.perf_counter() - t0, "examples": {"0": k0_doc.examples, **result.examples}}
    with atomic_dir(out) as tmp:
        _keep_suite_results(out, tmp)
        doc.write(tmp / ATTACK_JSON)
        save_directions(tmp / DIRECTIONS, result.directions.float(),
                        {"model": model_path, "layers": json.dumps([r.layer for r in doc.curve[1:]]),
                         "positions": json.dumps([r.position for r in doc.curve[1:]])})
        k0_doc.model_copy(update={"progress_key": None, "config": config_dict(cfg)}).write(tmp / K0_JSON)
        write_json_atomic(tmp / LOG_JSON, log_doc)
    shutil.rmtree(work, ignore_errors=True)
    return doc
