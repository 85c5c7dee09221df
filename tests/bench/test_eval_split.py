"""``irr-ray bench attack --eval-split``: the FLOP split's formulas, and the organism run end to end
(quick sizes; the replies of both generation engines must match — no timings are asserted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from irr_ray.bench.attack import LLAMA_1B, PAPER_ATTACK, _decode_flops, forward_flops, paper_flop_split


def test_decode_flops_sum_the_cached_steps() -> None:
    """n − 1 decode steps of one token each, attending to P + t cached positions at step t."""
    config = LlamaConfig(**LLAMA_1B)
    rows, prompt, new = 3, 20, 5
    heads, hd, layers = config.num_attention_heads, config.head_dim, config.num_hidden_layers
    one = forward_flops(config, rows, 1, layers, rows) - rows * layers * 4 * heads * hd
    expected = sum(one + rows * layers * 4 * heads * hd * (prompt + t) for t in range(1, new))
    assert _decode_flops(config, rows, prompt, new) == expected
    assert _decode_flops(config, rows, prompt, 1) == 0


def test_paper_flop_split_is_consistent() -> None:
    split = paper_flop_split()
    f = split["per_iteration"]
    assert 0 < f["score_floor"] < f["score_reference"]
    assert f["eval"] == pytest.approx(f["eval_generate"] + f["eval_nll_first_token"])
    assert split["eval_if_replies_end_at_64"] < f["eval"]
    assert split["per_attack_k_max"]["extract"] == pytest.approx(PAPER_ATTACK["k_max"] * f["extract"])
    # ≈ 2·params per generated token: 200 rows × 255 decode steps of a 1.24B-parameter model, at least
    assert f["eval_generate"] > 2 * 1.23e9 * 200 * 255


def test_eval_split_runs_on_the_organism(tmp_path: Path, organism_dir: Path) -> None:
    from irr_ray.bench.attack import run_eval_split

    organism = Path(organism_dir)
    threads = torch.get_num_threads()
    args = argparse.Namespace(organism_dir=str(organism), quick=True, eval_split=True, eval_split_wide=False,
                              eval_repeats=1, study_data=None, out=str(tmp_path / "split.json"))
    try:
        assert run_eval_split(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads((tmp_path / "split.json").read_text())
    assert out["engines"]["identical_replies"] is True
    split = out["splits"][0]
    assert split["extract_share"] + split["score_share"] + split["eval_share"] == pytest.approx(1)
    assert split["eval_n"] == [20, 20]
