"""Fixtures of the bad-input suite: a tiny study dataset, model directories broken in every way a
user meets (truncated / random weights, no config, no chat template, an unsupported family), and
markers that fail the test if a command starts expensive work (model loading, training,
generation, Ray, a server) before its checks have run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.attack.study_data import fixture_study_dataset


class ExpensiveWorkStarted(AssertionError):
    """Raised by a marker: the command began real work before rejecting its input."""


@pytest.fixture(scope="module")
def inputs(organism_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("badinput")
    data = fixture_study_dataset(organism_dir / "data" / "wildguardmix.parquet", root / "data", n_per_class=16)
    only_train = root / "only_train"
    only_train.mkdir()
    shutil.copy(data / "train.parquet", only_train / "train.parquet")
    models = root / "models"
    good = organism_dir / "instruct"
    for name in ("trunc", "rand", "nochat", "noconfig", "bert"):
        shutil.copytree(good, models / name)
    weights = models / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    (models / "rand" / "model.safetensors").write_bytes(bytes(range(256)) * 512)
    (models / "nochat" / "chat_template.jinja").unlink()
    tc = models / "nochat" / "tokenizer_config.json"
    tc.write_text(json.dumps({k: v for k, v in json.loads(tc.read_text()).items() if k != "chat_template"}))
    (models / "noconfig" / "config.json").unlink()
    (models / "bert" / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertLMHeadModel"], "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 128, "is_decoder": True}))
    return {"root": root, "data": data, "only_train": only_train, "models": models, "good": good,
            "organism": organism_dir, "source": organism_dir / "data" / "wildguardmix.parquet"}


@pytest.fixture
def no_expensive_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry point of real work raises :class:`ExpensiveWorkStarted`."""
    import subprocess

    import irr_ray.attack.run
    import irr_ray.attack.taskgroup
    import irr_ray.data.stage
    import irr_ray.driver
    import irr_ray.models.loading
    import irr_ray.organism
    import irr_ray.organism.build
    import irr_ray.runtime
    import irr_ray.train.single
    import irr_ray.train.sweep

    def marker(name: str):
        def _raise(*args, **kwargs):
            raise ExpensiveWorkStarted(f"{name} was called before the input was rejected")
        return _raise

    for module, attr in [(irr_ray.train.single, "train_to_dir"), (irr_ray.attack.run, "attack_model"),
                         (irr_ray.attack.run, "evaluate_model"), (irr_ray.attack.run, "evaluate_k0_doc"),
                         (irr_ray.data.stage, "_generate_and_judge_substages"),
                         (irr_ray.data.stage, "_write_parquet_dir"), (irr_ray.organism, "build_organism"),
                         (irr_ray.organism.build, "build_organism"), (irr_ray.train.sweep, "run_sweep"),
                         (irr_ray.attack.taskgroup, "run_attack_all"), (irr_ray.models.loading, "load_model"),
                         (irr_ray.runtime, "ensure_ray"), (irr_ray.driver, "ray_session"),
                         (subprocess, "Popen")]:
        monkeypatch.setattr(module, attr, marker(f"{module.__name__}.{attr}"))
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", marker("from_pretrained"))
    import huggingface_hub.constants

    # a hub-shaped id that is not local must fail from the cache check, never wait on the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
