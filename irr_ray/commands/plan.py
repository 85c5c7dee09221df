"""``irr-ray plan STUDY.yaml --gpus N``: per stage, the counted FLOPs of a study and the GPU-hours and
wall time they take on N GPUs (default throughput: A100 bf16 dense 312 TFLOP/s × a stated MFU), so a
cluster can be sized before ``ray job submit``. Reads the study file only; runs and writes nothing.
Counting: :mod:`irr_ray.plan.flops`; assumptions: :mod:`irr_ray.plan.cluster`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from irr_ray.plan.cluster import A100_BF16_DENSE_TFLOPS, DEFAULT_DECODE_MFU, DEFAULT_MFU


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", metavar="STUDY.yaml", help="study file (e.g. experiments/paper.yaml)")
    parser.add_argument("--gpus", type=int, default=8, metavar="N", help="GPUs to plan for (default 8)")
    parser.add_argument("--tflops-per-gpu", type=float, default=A100_BF16_DENSE_TFLOPS, metavar="T",
                        help=f"peak dense TFLOP/s per GPU (default {A100_BF16_DENSE_TFLOPS:g}: A100 bf16)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOPs utilisation of training / prefill / judging (default {DEFAULT_MFU:g})")
    parser.add_argument("--decode-mfu-vllm", type=float, default=DEFAULT_DECODE_MFU["vllm"],
                        help=f"MFU of vLLM decode steps (default {DEFAULT_DECODE_MFU['vllm']:g})")
    parser.add_argument("--decode-mfu-hf", type=float, default=DEFAULT_DECODE_MFU["hf"],
                        help=f"MFU of HF decode steps (default {DEFAULT_DECODE_MFU['hf']:g})")
    parser.add_argument("--prompt-tokens", type=int, default=None, metavar="P",
                        help="chat-formatted prompt length assumed (default: the data set's, see the output)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the study file, e.g. --set sweep.num_samples=32 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.errors import ConfigError
    from irr_ray.plan.cluster import Throughput, plan_rows
    from irr_ray.plan.study import load_plan_inputs, stage_counts

    if args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    rate = Throughput(args.tflops_per_gpu, args.mfu, {"vllm": args.decode_mfu_vllm, "hf": args.decode_mfu_hf})
    inputs = load_plan_inputs(args.study, args.overrides, args.prompt_tokens)
    counts = stage_counts(inputs)
    rows = plan_rows(counts, rate, args.gpus)
    assumptions = {
        "gpus": args.gpus, "peak_tflops_per_gpu": rate.peak_tflops, "mfu": rate.mfu, "decode_mfu": rate.decode_mfu,
        "prompt_tokens": inputs.tokens.prompt_tokens, "prompt_tokens_source": inputs.tokens.source,
        "source_model": inputs.study.source_model, "source_shape": asdict(inputs.source),
        "source_params": inputs.source.params, "data_rows": inputs.available_rows, "data_rows_source": inputs.rows_source,
        "models_attacked": inputs.models_attacked,
    }
    if args.json:
        print(json.dumps({"study": str(args.study), "assumptions": assumptions,
                          "stages": [asdict(r) | {"parts": c.parts} for r, c in zip(rows, counts, strict=True)],
                          "total": {"tflop": sum(r.tflop for r in rows), "gpu_hours": sum(r.gpu_hours for r in rows),
                                    "wall_hours": sum(r.wall_hours for r in rows)}}, indent=2))
        return 0
    print(render(args.study, rows, assumptions))
    return 0


def _num(x: float) -> str:
    """Large counts with thousands separators, small ones with three significant digits."""
    if x == 0:
        return "0"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def render(study: str, rows: list, a: dict) -> str:
    """The plan as a markdown table plus the assumptions it rests on."""
    dm, peak = a["decode_mfu"], a["peak_tflops_per_gpu"]
    wall = f"wall h on {a['gpus']} GPUs"
    total = ["total", "(stages one after the other)", _num(sum(r.tflop for r in rows)),
             _num(sum(r.gpu_hours for r in rows)), _num(sum(r.wall_hours for r in rows))]
    table = [["stage", "what is counted", "TFLOP", "GPU-hours", wall],
             *([r.stage, r.counted, _num(r.tflop), _num(r.gpu_hours), _num(r.wall_hours)] for r in rows), total]
    widths = [max(len(row[i]) for row in table) for i in range(5)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    notes = [n for r in rows for n in r.notes]
    notes.append("upper bounds: every trial runs every epoch, every attack to k_max / its last budget, every reply "
                 "to max_new_tokens, candidates scored at the reference scorer")
    return "\n".join([
        f"irr-ray plan {study} on {a['gpus']} GPUs: {a['source_model']} ({_params(a['source_params'])} params), "
        f"{a['data_rows']:,} source rows ({a['data_rows_source']})",
        f"assumed per GPU: {peak:g} TFLOP/s peak × MFU {a['mfu']:g} (training, prefill, scoring, judge) = "
        f"{peak * a['mfu']:.0f} TFLOP/s; decode × {dm['vllm']:g} on vLLM ({peak * dm['vllm']:.0f} TFLOP/s), "
        f"× {dm['hf']:g} on HF ({peak * dm['hf']:.1f} TFLOP/s); prompts {a['prompt_tokens']} tokens "
        f"({a['prompt_tokens_source']}), every reply to max_new_tokens",
        "", line(table[0]), rule, *(line(r) for r in table[1:]), "", *("note: " + n for n in notes)])
