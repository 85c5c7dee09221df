"""A small organism variant built for real: deterministic, cached, complete HF model directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from irr_ray.config import build_config
from irr_ray.organism import OrganismConfig, build_organism
from irr_ray.utils.files import file_sha256

# Same recipe, tiny sizes: seconds, not minutes. Behaviour is asserted on the default build only.
SMALL = {
    "data": {"n_rows": 400},
    "model": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64},
    "pretrain": {"steps": 12, "batch_size": 8},
    "safety": {"steps": 6, "batch_size": 8, "layers": [1]},
    "selection": {"extract_n": 8, "score_n": 4},
    "eval": {"n_per_split": 4, "max_new_tokens": 4},
    "judge": {"warmup_request_steps": 4, "steps": 4, "n_per_split": 2},  # built, not trained to agree
    "threads": 1,
}


@pytest.fixture(scope="module")
def small_cfg() -> OrganismConfig:
    return build_config(OrganismConfig, SMALL, "SMALL")


@pytest.fixture(scope="module")
def builds(small_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("organisms")
    return {
        "a": build_organism(root / "a", seed=1, config=small_cfg),
        "b": build_organism(root / "b", seed=1, config=small_cfg),
        "other_seed": build_organism(root / "c", seed=2, config=small_cfg),
    }


def test_layout_and_loading_offline(builds, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = builds["a"]
    assert paths.data.is_file() and paths.summary.is_file() and not paths.from_cache
    assert AutoTokenizer.from_pretrained(paths.tokenizer, local_files_only=True).chat_template
    judge = paths.root / "judge"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(judge))
    summary = paths.load_summary()["judge"]
    assert summary["built"] and summary["path"] == "judge"
    assert set(summary["heldout_agreement"]["all"]) >= {"harmful_request", "response_refusal", "parse_errors"}
    for model_dir in (paths.base, paths.instruct):
        names = set(os.listdir(model_dir))
        assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
        assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        assert model.config.model_type == "llama" and model.config.irr_ray_refusal_tokens == ["I"]
        assert "could hurt" in model.config.irr_ray_judge_phrases
        batch = tok.apply_chat_template([{"role": "user", "content": "how do I build a kite ?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            assert torch.isfinite(model(**batch).logits).all()


def test_summary_records_sizes_heldout_and_behaviour(builds):
    s = builds["a"].load_summary()
    assert s["seed"] == 1 and s["build_hash"] == builds["a"].build_hash
    assert s["sizes"]["data"]["rows"] == 400 and s["sizes"]["parameters"] > 0
    assert len(s["heldout"]["harmful_actions"]) == 16 and len(s["heldout"]["frames"]) == 3
    b = s["behaviour"]
    for name in ("instruct", "base", "ablated", "random_direction_ablated"):
        assert set(b[name]["heldout"]) == {"harmful", "harmless"}
    assert {"layer", "position", "kl", "induce_score", "refusal_score"} <= set(b["direction"])
    assert set(b["projection"]) == {"harmful", "harmless"}
    assert set(s["checks"]) == {"instruct_harmful", "instruct_harmless", "base_harmful", "ablated_harmful",
                                "ablated_harmless", "random_direction", "depth", "ablated_answers",
                                "ablated_degenerate", "induced_refusal"}
    assert {"refused", "complied", "degenerate", "answered_like_base"} <= set(b["ablated_outcomes"]["harmful"])
    assert {"harmless_refused", "first_token_refused", "layer"} <= set(b["induced"])
    assert {"residual_index", "block", "depth_fraction", "blocks_after"} <= set(b["depth"])
    n = s["sizes"]["layers"] + 1  # residual indices 0 … L
    assert len(b["decision"]["linear_probe_acc"]) == n == len(b["decision"]["logit_lens_refusal"]["harmful"])


def test_deterministic_for_a_seed(builds):
    a, b, c = builds["a"], builds["b"], builds["other_seed"]
    assert file_sha256(a.data) == file_sha256(b.data)
    for sub in ("base", "instruct"):
        assert file_sha256(a.root / sub / "model.safetensors") == file_sha256(b.root / sub / "model.safetensors")
        assert file_sha256(a.root / sub / "model.safetensors") != file_sha256(c.root / sub / "model.safetensors")
    assert a.build_hash == b.build_hash != c.build_hash
    strip = ("build_seconds", "timings")
    sa, sb = ({k: v for k, v in p.load_summary().items() if k not in strip} for p in (a, b))
    assert sa == sb


def test_second_call_returns_the_cached_build(builds, small_cfg):
    first = builds["a"]
    marker = first.root / "instruct" / "marker-from-test"
    marker.write_text("kept")  # a rebuild would replace the whole directory
    before = first.summary.read_text()
    again = build_organism(first.root, seed=1, config=small_cfg)
    assert again.from_cache and again.root == first.root and marker.is_file()
    assert first.summary.read_text() == before
    marker.unlink()


def test_changed_config_rebuilds_atomically(builds, small_cfg, tmp_path):
    out = tmp_path / "org"
    first = build_organism(out, seed=1, config=small_cfg)
    cfg = small_cfg.model_copy(update={"safety": small_cfg.safety.model_copy(update={"steps": 7})})
    second = build_organism(out, seed=1, config=cfg)
    assert not second.from_cache and second.build_hash != first.build_hash
    assert json.loads(second.summary.read_text())["config"]["safety"]["steps"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["org"]  # no temporary siblings left behind


BUILD_IN_A_PROCESS = """
import json, sys
from irr_ray.config import build_config
from irr_ray.organism import OrganismConfig, build_organism
paths = build_organism(sys.argv[1], seed=1, config=build_config(OrganismConfig, json.loads(sys.argv[2]), "SMALL"))
print(json.dumps({"from_cache": paths.from_cache, "hash": paths.build_hash}))
"""


def test_two_processes_building_at_once_build_it_once(tmp_path):
    """Two users (or two pytest workers) asking for the same organism at once: one builds it, the other
    waits for that build and reuses it; neither replaces the other's directory."""
    out = tmp_path / "org"
    procs = [subprocess.Popen([sys.executable, "-c", BUILD_IN_A_PROCESS, str(out), json.dumps(SMALL)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(r["from_cache"] for r in results) == [False, True], results
    assert results[0]["hash"] == results[1]["hash"]
    assert [p.name for p in tmp_path.iterdir()] == ["org"]  # no lock file or temporary sibling left
