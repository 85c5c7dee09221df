"""From counted FLOPs to GPU-hours and wall time on N GPUs (pure arithmetic, stated assumptions).

Throughput: a GPU sustains ``peak × MFU`` (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM",
its definition: counted model FLOPs per second over the datasheet peak). Defaults:

* peak **312 TFLOP/s** — A100 bf16 dense Tensor Core (NVIDIA A100 datasheet; 624 is with
  structured sparsity, which none of this uses);
* **MFU 0.35** for training, prefill, scoring and judging (large matmuls; PaLM reached 0.46 at 540B,
  a 1B model at micro-batch 8 × 512 tokens gets less);
* decode, per generation backend: **0.10 on vLLM** (continuous batching of 256 rows; a 1B decode
  step reads every weight and the KV cache, so it is memory-bound: Pope et al. 2022, "Efficiently
  Scaling Transformer Inference") and **0.02 on HF** (the attack's batches of 64 through a
  Python decode loop, launch-bound).

These are assumptions, not measurements: every one is a flag of ``irr-ray plan``.

Wall time uses the stage's parallelism from the config, capped by the N GPUs: the data stage's
generation and judge actors stream together when both pools fit on N GPUs (wall = the slower
pool), else one pool after the other; sweep trials (``max_concurrent_trials``, ``resources.gpu``
each) and attacked models (one task each, ``attack.resources.gpu``) run in waves of equal tasks.
An actor, trial or task the config puts on CPUs (0 GPUs, as the organism's) is planned on one GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from irr_ray.errors import ConfigError
from irr_ray.plan.flops import StageCount

A100_BF16_DENSE_TFLOPS = 312.0
DEFAULT_MFU = 0.35
DEFAULT_DECODE_MFU = {"vllm": 0.10, "hf": 0.02}


@dataclass(frozen=True)
class Throughput:
    """Sustained FLOP/s per GPU: ``peak_tflops`` × ``mfu`` (dense work), × ``decode_mfu[backend]``
    (cached decode steps)."""

    peak_tflops: float = A100_BF16_DENSE_TFLOPS
    mfu: float = DEFAULT_MFU
    decode_mfu: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DECODE_MFU))

    def __post_init__(self) -> None:
        if not self.peak_tflops > 0:
            raise ConfigError(f"--tflops-per-gpu must be > 0, got {self.peak_tflops:g}")
        for name, value in {"--mfu": self.mfu, **{f"--decode-mfu-{k}": v for k, v in self.decode_mfu.items()}}.items():
            if not 0 < value <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {value:g}")

    def seconds(self, dense: float, decode: float, backend: str) -> float:
        """GPU-seconds of ``dense`` + ``decode`` FLOPs on one GPU."""
        peak = self.peak_tflops * 1e12
        return dense / (peak * self.mfu) + decode / (peak * self.decode_mfu[backend])


@dataclass(frozen=True)
class PlanRow:
    """One stage of the plan: what is counted, TFLOP, GPU-hours and wall hours on ``gpus`` GPUs."""

    stage: str
    counted: str
    tflop: float
    gpu_hours: float
    wall_hours: float
    gpus_used: int
    notes: tuple[str, ...] = ()


def _slots(count: StageCount, gpus: int) -> int:
    if gpus < count.gpus_per_unit:
        raise ConfigError(f"--gpus {gpus}: the {count.stage} stage needs {count.gpus_per_unit:g} GPUs per task")
    return max(1, min(count.parallel, int(gpus // count.gpus_per_unit)))


def _data_wall(count: StageCount, rate: Throughput, gpus: int) -> tuple[float, int]:
    """Generation and judge pools: together when both fit, else one after the other."""
    gen_s = rate.seconds(count.parts["generate_prefill"], count.parts["generate_decode"], count.decode_backend)
    judge_s = rate.seconds(count.parts["judge"], 0.0, count.decode_backend)
    gen_gpus = min(count.parts["generation_gpus"], gpus)
    judge_gpus = min(count.parts["judge_gpus"], gpus)
    if judge_s == 0:
        return gen_s / gen_gpus, int(gen_gpus)
    if count.parts["generation_gpus"] + count.parts["judge_gpus"] <= gpus:
        return max(gen_s / gen_gpus, judge_s / judge_gpus), int(gen_gpus + judge_gpus)
    return gen_s / gen_gpus + judge_s / judge_gpus, int(max(gen_gpus, judge_gpus))


def plan_row(count: StageCount, rate: Throughput, gpus: int) -> PlanRow:
    """GPU-hours and wall hours of one stage on ``gpus`` GPUs."""
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    gpu_s = rate.seconds(count.dense, count.decode, count.decode_backend)
    if count.total == 0:
        wall_s, used = 0.0, 0
    elif count.stage == "data":
        wall_s, used = _data_wall(count, rate, gpus)
    elif count.units > 0:
        slots = _slots(count, gpus)
        per_unit = gpu_s / count.units / count.gpus_per_unit
        wall_s, used = math.ceil(count.units / slots) * per_unit, int(min(count.units, slots) * count.gpus_per_unit)
    else:
        used = min(count.parallel, gpus)
        wall_s = gpu_s / used
    return PlanRow(stage=count.stage, counted=count.counted, tflop=count.total / 1e12, gpu_hours=gpu_s / 3600,
                   wall_hours=wall_s / 3600, gpus_used=used, notes=tuple(count.notes))


def plan_rows(counts: list[StageCount], rate: Throughput, gpus: int) -> list[PlanRow]:
    return [plan_row(c, rate, gpus) for c in counts]
