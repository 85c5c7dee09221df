"""``irr-ray bench data``: the Ray Data stage vs a plain single-process loop, same work.

Every side runs the same generation + judging code (:class:`HFGenerator`, :class:`JudgeActor`) on
the same prepared prompts with the same batch size and torch thread count. Times are end to end,
from launch to results in the caller's hands, model load included:

- plain loop in a fresh process: Python start, imports, model load, loop (what a Ray actor pays);
- plain loop in this warm process: torch/transformers already imported;
- Ray Data: one generation actor and one judge actor (Ray itself is started once, beforehand, with
  its workers at niceness 0 like the plain loop, if this process starts it).

With ``--vllm`` a fourth side runs the same Ray Data pipeline with a **vLLM** generation actor
(:class:`irr_ray.generation.vllm.VLLMGenerator`; vLLM's CPU build without GPUs, the same judge
actor) on the same prompts, and the line ``vLLM vs HF actors`` prints both rows/s, end to end
(engine start included) and after the first batch, with the share of prompts whose greedy replies
are identical.

Each side runs ``repeats`` times, interleaved; the best time counts. Prints rows/s of each and Ray's
overhead against both plain loops; the target is <= 20% at one actor. It also prints the rows/s
after the first output batch of each side (start-up excluded: process, imports, model load, actor
scheduling), which isolates Ray's per-batch cost from its one-time cost.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from irr_ray.errors import ConfigError


def _prompts(organism_dir: Path, n: int, seed: int) -> pd.DataFrame:
    from irr_ray.data.ingest import read_source
    from irr_ray.data.prepare import prepare_prompts
    from irr_ray.data.validate import validate_raw

    table = read_source(str(organism_dir / "data" / "wildguardmix.parquet"))
    validate_raw(table, "drop")
    prompts, _ = prepare_prompts(table, seed, n)
    return prompts[["row_id", "prompt"]]


def plain_loop(prompts: pd.DataFrame, gen_cls, gen_kwargs: dict, judge_spec: dict, batch_size: int,
               marks: list[tuple[float, int]] | None = None) -> pd.DataFrame:
    """The reference: one process, load once, then generate + judge batch after batch.
    ``marks`` collects (wall time, rows) as each batch finishes."""
    from irr_ray.judges.base import JudgeActor

    generator, judge = gen_cls(**gen_kwargs), JudgeActor(judge_spec)
    parts = []
    for i in range(0, len(prompts), batch_size):
        parts.append(judge(generator(prompts.iloc[i : i + batch_size])))
        if marks is not None:
            marks.append((time.time(), len(parts[-1])))
    return pd.concat(parts, ignore_index=True)


def plain_process(job_path: str) -> None:
    """Entry point of the cold plain loop: a fresh Python process, like a Ray actor's worker."""
    import torch

    from irr_ray.generation.backends import HFGenerator

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["gen_kwargs"]["torch_threads"])
    prompts = pd.read_parquet(job["prompts"])
    marks: list[tuple[float, int]] = []
    out = plain_loop(prompts, HFGenerator, job["gen_kwargs"], job["judge_spec"], job["batch_size"], marks)
    out.to_parquet(job["output"], index=False)
    Path(job["marks"]).write_text(json.dumps(marks))


def steady_rows_per_s(marks: list[tuple[float, int]]) -> float:
    """Rows/s after the first output batch: start-up (process, imports, model load, scheduling)
    excluded, so what is left is the per-batch cost of each side."""
    if len(marks) < 2:
        return float("nan")
    rows = sum(n for _, n in marks[1:])
    return rows / max(marks[-1][0] - marks[0][0], 1e-9)


def _timed(fn) -> tuple[float, pd.DataFrame, list[tuple[float, int]]]:
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    result = fn(marks)
    return time.perf_counter() - t0, result, marks


def run(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    import sys
    import tempfile

    import ray
    import torch

    from irr_ray.data.config import DataConfig
    from irr_ray.data.pipeline import ensure_ray, run_actor_pipeline
    from irr_ray.generation.backends import generator_udf
    from irr_ray.judges.base import JudgeActor, judge_spec

    if not args.organism_dir:
        raise ConfigError("bench data needs --organism-dir DIR (an organism built by `irr-ray organism`)")
    organism = Path(args.organism_dir).expanduser().resolve()
    model = organism / "instruct"
    # Full: 1024 balanced organism prompts with the stage's decoding defaults; quick: a smoke test.
    n, repeats = (64, 1) if args.quick else (1024, 3)
    for flag in ("rows", "repeats"):
        value = getattr(args, flag, None)
        if value is not None and value < (2 if flag == "rows" else 1):
            raise ConfigError(f"bench data --{flag} {value}: must be at least {2 if flag == 'rows' else 1}")
    n = getattr(args, "rows", None) or n
    repeats = getattr(args, "repeats", None) or repeats
    cfg = DataConfig(source=str(organism / "data"), source_model=str(model), progress=False,
                     generation={"batch_size": 32, "torch_threads": 1}, judge={"batch_size": 32})
    prompts = _prompts(organism, n, cfg.seed)
    gen_cls, gen_kwargs = generator_udf(cfg.generation, str(model), cfg.seed)
    spec = judge_spec(cfg.judge, str(model))
    batch = cfg.generation.batch_size
    torch.set_num_threads(cfg.generation.torch_threads)
    # Ray starts its workers at niceness 15; on a shared machine they would then lose the CPU to
    # every other process while the plain loop runs at 0. Compare like with like.
    os.environ.setdefault("RAY_worker_niceness", "0")
    started_ray = not ray.is_initialized()
    ensure_ray(cfg.ray)

    tmp = Path(tempfile.mkdtemp(prefix="irr-bench-data-"))
    prompts.to_parquet(tmp / "prompts.parquet", index=False)
    job = {"prompts": str(tmp / "prompts.parquet"), "output": str(tmp / "plain.parquet"),
           "marks": str(tmp / "marks.json"), "gen_kwargs": gen_kwargs, "judge_spec": spec, "batch_size": batch}
    (tmp / "job.json").write_text(json.dumps(job))
    cold_cmd = [sys.executable, "-c", "import sys; from irr_ray.bench.data import plain_process; "
                "plain_process(sys.argv[1])", str(tmp / "job.json")]

    def cold(marks: list) -> pd.DataFrame:
        subprocess.run(cold_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marks.extend(tuple(m) for m in json.loads((tmp / "marks.json").read_text()))
        return pd.read_parquet(tmp / "plain.parquet")

    def ray_side(marks: list) -> pd.DataFrame:
        return run_actor_pipeline(prompts, (gen_cls, gen_kwargs, cfg.generation),
                                  (JudgeActor, {"spec": spec}, cfg.judge), progress=False,
                                  sink=lambda b: marks.append((time.time(), len(b))))

    sides = {
        "plain_cold": cold,
        "plain_warm": lambda marks: plain_loop(prompts, gen_cls, gen_kwargs, spec, batch, marks),
        "ray": ray_side,
    }
    if getattr(args, "vllm", False):
        vllm_gen = cfg.generation.model_copy(update={"backend": "vllm"})
        vllm_cls, vllm_kwargs = generator_udf(vllm_gen, str(model), cfg.seed)

        def ray_vllm(marks: list) -> pd.DataFrame:
            return run_actor_pipeline(prompts, (vllm_cls, vllm_kwargs, vllm_gen),
                                      (JudgeActor, {"spec": spec}, cfg.judge), progress=False,
                                      sink=lambda b: marks.append((time.time(), len(b))))

        sides["ray_vllm"] = ray_vllm
    times: dict[str, list[float]] = {k: [] for k in sides}
    steady: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, pd.DataFrame] = {}
    for _ in range(repeats):
        for name, fn in sides.items():
            seconds, outputs[name], marks = _timed(fn)
            times[name].append(seconds)
            steady[name].append(steady_rows_per_s(marks))

    best = {k: min(v) for k, v in times.items()}
    best_steady = {k: max(v) for k, v in steady.items()}
    plain_steady = max(best_steady["plain_cold"], best_steady["plain_warm"])
    rows = len(prompts)
    reference = outputs["plain_warm"]["response"].tolist()
    same = all(o.sort_values("row_id")["response"].tolist() == reference
               for name, o in outputs.items() if name != "ray_vllm")
    result = {
        "rows": rows, "batch_size": batch, "max_new_tokens": cfg.generation.max_new_tokens, "actors": 1,
        "torch_threads": cfg.generation.torch_threads, "repeats": repeats, "model": str(model),
        "ray_worker_niceness": os.environ.get("RAY_worker_niceness"),
        "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "rows_per_s": {k: round(rows / t, 2) for k, t in best.items()},
        "ray_overhead_vs_cold": round(best["ray"] / best["plain_cold"] - 1.0, 4),
        "ray_overhead_vs_warm": round(best["ray"] / best["plain_warm"] - 1.0, 4),
        "steady_rows_per_s": {k: round(v, 2) for k, v in best_steady.items()},
        "ray_overhead_steady": round(plain_steady / best_steady["ray"] - 1.0, 4),
        "identical_responses": same,
    }
    print(f"data stage: {rows} prompts of {model}, batch {batch}, {cfg.generation.max_new_tokens} new tokens, "
          f"1 actor, {cfg.generation.torch_threads} torch thread(s), best of {repeats}")
    print(f"  plain loop, fresh process : {best['plain_cold']:8.2f} s {result['rows_per_s']['plain_cold']:9.2f} rows/s"
          "  (imports + model load + loop, like an actor)")
    print(f"  plain loop, warm process  : {best['plain_warm']:8.2f} s {result['rows_per_s']['plain_warm']:9.2f} rows/s"
          "  (torch already imported)")
    print(f"  Ray Data, 1+1 actors      : {best['ray']:8.2f} s {result['rows_per_s']['ray']:9.2f} rows/s")
    print(f"  Ray overhead: {100 * result['ray_overhead_vs_cold']:+.1f}% vs the fresh process, "
          f"{100 * result['ray_overhead_vs_warm']:+.1f}% vs the warm one (target <= +20%); "
          f"identical responses: {same}")
    print(f"  after the first batch (start-up excluded): plain {plain_steady:.2f} rows/s, "
          f"Ray {best_steady['ray']:.2f} rows/s: Ray overhead {100 * result['ray_overhead_steady']:+.1f}%")
    if "ray_vllm" in outputs:
        replies = outputs["ray_vllm"].sort_values("row_id")["response"].tolist()
        hf_replies = outputs["ray"].sort_values("row_id")["response"].tolist()
        equal = sum(a == b for a, b in zip(replies, hf_replies)) / max(rows, 1)
        result.update(vllm_identical_share=round(equal, 4),
                      vllm_vs_hf=round(result["rows_per_s"]["ray_vllm"] / result["rows_per_s"]["ray"], 3),
                      vllm_vs_hf_steady=round(best_steady["ray_vllm"] / best_steady["ray"], 3))
        print(f"  Ray Data, vLLM + judge    : {best['ray_vllm']:8.2f} s {result['rows_per_s']['ray_vllm']:9.2f} rows/s"
              "  (vLLM's CPU build without GPUs; engine start included)")
        print(f"  vLLM vs HF actors: {result['rows_per_s']['ray_vllm']:.2f} vs {result['rows_per_s']['ray']:.2f} "
              f"rows/s end to end (x{result['vllm_vs_hf']:.2f}), {best_steady['ray_vllm']:.2f} vs "
              f"{best_steady['ray']:.2f} rows/s after the first batch (x{result['vllm_vs_hf_steady']:.2f}); "
              f"identical replies on {100 * equal:.1f}% of prompts")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    if started_ray:
        ray.shutdown()
    return 0
