"""The trainer on the real organism: it learns, its statistics are defined, the teacher is cached,
checkpoints are plain HF directories that resume exactly, and ``irr-ray train`` is resumable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import irr_ray.train.run as run_module
from irr_ray.cli import main
from irr_ray.core.readouts import mixed_readout
from irr_ray.train.checkpoint import read_trial_json
from irr_ray.train.presets import resolve_train_config
from irr_ray.train.run import TrainingRun
from irr_ray.train.trainer import pool_layers


@pytest.fixture(scope="module")
def trained(tiny_train: dict[str, Any], train_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(run, initial weights, number of teacher passes, checkpoint dir): cov+KD for 2 epochs."""
    torch.set_num_threads(1)
    calls = {"n": 0}
    original = run_module.teacher_logits

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_module, "teacher_logits", counting)
    try:
        cfg = resolve_train_config(tiny_train, {"condition": "cov_kd"})
        run = TrainingRun(cfg, train_data)
        initial = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        teacher_tensor = run.trainer.teacher
        history = [run.run_epoch() for _ in range(cfg.epochs)]
    finally:
        mp.undo()
    assert run.trainer.teacher is teacher_tensor  # the same cached logits served every epoch
    ckpt = tmp_path_factory.mktemp("ckpt") / "epoch2"
    run.save(ckpt, extra={"name": "test", "condition": "cov_kd"})
    return run, initial, calls["n"], ckpt, history


def test_training_changes_weights_and_lowers_lm_loss(trained) -> None:
    run, initial, _, _, history = trained
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(v, initial[k])]
    assert len(changed) == len(initial)
    assert history[-1]["eval/lm_loss"] < history[0]["eval/lm_loss"] or history[-1]["train/lm_loss"] < history[0]["train/lm_loss"]
    assert run.trainer.state.global_step == 2 * run.trainer.steps_per_epoch


def test_statistics_never_degenerate(trained) -> None:
    run, _, _, _, history = trained
    assert run.trainer.state.degenerate_steps == 0
    assert all(h["train/degenerate_steps"] == 0 for h in history)
    assert all(h["train/penalty"] > 0 for h in history)  # covariance term really computed


def test_degenerate_batch_is_counted(trained) -> None:
    run, _, _, _, _ = trained
    harmful = np.flatnonzero(run.train_set.labels.numpy() == 1)[:8]
    before = run.trainer.state.degenerate_steps
    loss, parts = run.trainer.compute_loss(run.train_set.collate(harmful), torch.Generator().manual_seed(0))
    assert run.trainer.state.degenerate_steps == before + 1
    assert float(parts["train/penalty"]) == 0.0
    run.trainer.state.degenerate_steps = before


def test_teacher_is_computed_once(trained) -> None:
    run, _, teacher_calls, _, _ = trained
    assert teacher_calls == 2  # validation slice + training prompts, before epoch 1; never again
    assert run.teacher_passes == 2
    assert run.trainer.teacher.shape == (len(run.train_set), run.model.config.vocab_size)


def test_epoch_metrics(trained) -> None:
    _, _, _, _, history = trained
    m = history[-1]
    for key in ("train/loss", "train/lm_loss", "train/kd", "eval/lm_loss", "eval/penalty_mean", "eval/penalty_cov",
                "eval/kd_kl", "eval/refusal_harmful", "eval/refusal_harmless", "eval/probe_acc",
                "eval/attack_refusal_k1", "eval/attack_refusal_k2", "eval/attack_harmless_refusal_k1",
                "eval/attack_harmless_refusal_k2", "eval/reply_drift_k0", "eval/reply_drift_ablated", "objective",
                "time/eval_frac"):
        assert np.isfinite(m[key]), key
    assert 0.0 <= m["eval/refusal_harmful"] <= 1.0 and 0.0 <= m["eval/probe_acc"] <= 1.0


def test_reply_drift_is_zero_for_the_source(trained) -> None:
    """The drift term scores the source's own greedy replies: the untrained model (= the source)
    finds them exactly as likely as the source did."""
    run, *_ = trained
    from irr_ray.models.loading import load_model
    from irr_ray.train.evaluation import reply_nll

    ev = run.evaluator
    assert ev.replies is not None and ev.replies.input_ids.shape[0] == 2 * ev.attack_batch.input_ids.shape[0]
    source = load_model(run.cfg.model, device="cpu")
    drift = reply_nll(source, ev.replies) - ev.replies.nll
    assert float(drift.abs().max()) < 1e-6


def test_checkpoint_is_an_hf_model_dir(trained) -> None:
    run, _, _, ckpt, _ = trained
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.chat_template == run.tokenizer.chat_template
    assert (ckpt / "model.safetensors").is_file()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, run.model.state_dict()[name].cpu()), name
    info = read_trial_json(ckpt)  # a TrialDoc in the training checkpoint too
    assert info.config["match"] == "cov" and info.epochs_completed == 2 and info.name == "test"
    assert info.condition == "cov_kd" and info.source_model == run.cfg.model
    assert json.loads((ckpt / "trainer_state.json").read_text())["epoch"] == 2


def test_resume_restores_training_state(trained, train_data: Path) -> None:
    run, _, _, ckpt, _ = trained
    resumed = TrainingRun(run.cfg.model_copy(update={"epochs": 3}), train_data, resume_from=ckpt)
    assert resumed.epoch == 2 and resumed.trainer.state.global_step == run.trainer.state.global_step
    a, b = run.trainer.optimizer.state_dict(), resumed.trainer.optimizer.state_dict()
    first = next(iter(a["state"]))
    assert torch.equal(a["state"][first]["exp_avg"], b["state"][first]["exp_avg"])
    # the teacher is the source model, not the checkpoint: same cached targets as the fresh run
    torch.testing.assert_close(resumed.evaluator.teacher, run.evaluator.teacher)
    assert not resumed.finished
    resumed.run_epoch()
    assert resumed.finished


def test_pooling_all_layers_equals_the_core_readout() -> None:
    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    hs = tuple(torch.randn(3, 8, 5) for _ in range(3))
    from irr_ray.core.readouts import mixed_readout_weights, sample_readout_plan

    kw = dict(last_ratio=0.3, random_ratio=0.3, chat_ratio=0.2)
    plan = sample_readout_plan(mask, *kw.values(), torch.Generator().manual_seed(3))
    pooled = pool_layers(hs, mixed_readout_weights(mask, plan, 0.5, (-5, -4, -3, -2, -1)))
    for layer, h in enumerate(hs):
        ref = mixed_readout(h, mask, **kw, random_fraction=0.5, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(pooled[layer], ref)


def test_train_cli_resumable_and_baseline(tiny_train: dict[str, Any], train_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ckpt"
    args = ["train", "--condition", "l1", "--model", tiny_train["model"], "--data-dir", str(train_data),
            "--out", str(out), "--set", "epochs=1", "--set", "micro_batch=16", "--set", "max_train_samples=64",
            "--set", "eval.n_per_class=8", "--set", "eval.attack_k=1", "--set", "lr=1e-3"]
    assert main(args) == 0
    trial = json.loads((out / "trial.json").read_text())
    assert trial["condition"] == "l1" and trial["epochs_completed"] == 1
    assert trial["degenerate_steps"]["count"] == 0 and trial["degenerate_steps"]["steps"] > 0  # {count, steps}
    assert not (out / "optimizer.pt").exists() and not (tmp_path / ".ckpt.work").exists()
    AutoModelForCausalLM.from_pretrained(out)
    capsys.readouterr()
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out

    base_out = tmp_path / "baseline"
    assert main(["train", "--condition", "baseline", "--model", tiny_train["model"], "--data-dir", str(train_data),
                 "--out", str(base_out), "--set", "eval.n_per_class=8"]) == 0
    source = AutoModelForCausalLM.from_pretrained(tiny_train["model"])
    exported = AutoModelForCausalLM.from_pretrained(base_out)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    assert json.loads((base_out / "trial.json").read_text())["epochs_completed"] == 0
