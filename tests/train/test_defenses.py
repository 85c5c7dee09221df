"""Defenses beyond the method on the real organism: ReFAT, DeepRefusal-style random ablation and
reply KD — the ablation gates exactly the rows / layers / positions it should, the refusal
directions are re-estimated every ``refat_interval`` steps, reply KD distils the teacher's greedy
replies (zero for the teacher itself), every new condition trains, and a run is deterministic
given its seed, also across a resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions
from irr_ray.errors import ConfigError
from irr_ray.models.families import get_layout
from irr_ray.train import defenses
from irr_ray.train.defenses import RefusalDirections, masked_ablation, resolve_layers
from irr_ray.train.presets import resolve_train_config
from irr_ray.train.replies import teacher_replies
from irr_ray.train.run import TrainingRun, load_master_model
from irr_ray.train.trainer import compute_dtype

NEW_CONDITIONS = ("kd_reply", "refat", "random_ablation", "cov_kd_refat")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small(tiny_train: dict[str, Any]) -> dict[str, Any]:
    """One epoch = 2 optimizer steps (64 prompts, micro-batches of 32); a cheap evaluation."""
    return {**tiny_train, "epochs": 1, "max_train_samples": 64,
            "eval": {**tiny_train["eval"], "attack_k": 1, "attack_candidates": 1}}


def _block_outputs(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[Any]]:
    layout = get_layout(model)
    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        seen.append((output if isinstance(output, torch.Tensor) else output[0]).detach())

    return seen, [b.register_forward_hook(hook) for b in layout.blocks]


def _leak(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """|x·Dᵀ| / ‖x‖ per position (max over directions)."""
    return ((x @ d.T).abs().amax(-1) / x.norm(dim=-1).clamp_min(1e-12))


# ---------------------------------------------------------------------------- the gated ablation


def test_masked_ablation_gates_rows_layers_and_positions(source_model: str, train_data: Path) -> None:
    model = load_master_model(source_model, "cpu").eval()
    n_layers = get_layout(model).num_layers

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    ids = torch.randint(5, model.config.vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    d = orthonormalize(torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).logits
        hooks_before = n_hooks()  # transformers keeps its own output-capturing hooks

        # per row: rows 1 and 3 ablated at every layer and position, rows 0 and 2 untouched
        seen, handles = _block_outputs(model)
        with masked_ablation(model, d, torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 4, 1)):
            gated = model(input_ids=ids).logits
        for h in handles:
            h.remove()
        assert len(seen) == n_layers
        for out in seen:
            assert float(_leak(out[[1, 3]], d).max()) < 1e-5
            assert float(_leak(out[[0, 2]], d).min()) > 1e-3
        assert torch.equal(gated[[0, 2]], ref[[0, 2]])  # untouched rows: bit-identical
        with ablate_directions(model, d):  # an all-on gate is the attack's own three-site ablation
            full = model(input_ids=ids).logits
        torch.testing.assert_close(gated[[1, 3]], full[[1, 3]], atol=1e-5, rtol=1e-5)

        # per (layer, row, position): block ℓ's output lies in span(D)^⊥ exactly where m[ℓ] = 1
        m = (torch.rand(n_layers, 4, 12, generator=torch.Generator().manual_seed(2)) < 0.5).float()
        seen, handles = _block_outputs(model)
        with masked_ablation(model, d, m):
            model(input_ids=ids)
        for h in handles:
            h.remove()
        for layer, out in enumerate(seen):
            leak = _leak(out, d)
            assert float(leak[m[layer] == 1].max()) < 1e-5
            assert float(leak[m[layer] == 0].min()) > 1e-4
    assert n_hooks() == hooks_before  # every ablation hook is gone


# ---------------------------------------------------------------------------- ReFAT in the trainer


@pytest.fixture(scope="module")
def refat_p1(small: dict[str, Any], train_data: Path) -> TrainingRun:
    torch.set_num_threads(1)
    cfg = resolve_train_config(small, {"condition": "refat"}).with_knobs({"refat_p": 1.0})
    return TrainingRun(cfg, train_data)


def test_refat_ablates_exactly_the_harmful_copies(refat_p1: TrainingRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """With p = 1 every harmful row gets an ablated copy; the copies see the direction removed at
    every block output and position, the original rows (harmless ones included) are untouched."""
    run = refat_p1
    trainer = run.trainer
    trainer.before_step()
    d = trainer.defense.estimator.directions
    assert d is not None and d.shape == (1, run.model.config.hidden_size)
    idx = next(trainer.windows(0))[0]
    batch = run.train_set.collate(idx)
    harmful = np.flatnonzero(run.train_set.labels.numpy()[idx] == 1)
    gates = []
    original = defenses.masked_ablation

    def spy(model, directions, masks):
        gates.append(masks.clone())
        return original(model, directions, masks)

    monkeypatch.setattr(defenses, "masked_ablation", spy)
    seen, handles = _block_outputs(run.model)
    try:
        loss, parts = trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    finally:
        for h in handles:
            h.remove()
    b = len(idx)
    assert len(gates) == 1 and float(parts["train/ablated_rows"]) == len(harmful)
    assert gates[0].shape == (1, b + len(harmful), 1)
    assert gates[0].flatten().tolist() == [0.0] * b + [1.0] * len(harmful)
    assert float(parts["train/refusal_ablated"]) > 0 and torch.isfinite(loss)

    extended = trainer.replies.extend(batch)
    rows = torch.as_tensor(harmful)
    real = extended.attention_mask.bool()[rows]
    with torch.no_grad():
        clean_seen, handles = _block_outputs(run.model)
        run.model(**extended.model_inputs(), use_cache=False)
        for h in handles:
            h.remove()
        ablated_seen, handles = _block_outputs(run.model)
        with ablate_directions(run.model, d):  # the harmful rows alone, ablated everywhere
            run.model(**extended.rows(rows).model_inputs(), use_cache=False)
        for h in handles:
            h.remove()
    for out, clean, ablated in zip(seen, clean_seen, ablated_seen, strict=True):
        copies = out[b:]
        assert float(_leak(copies, d)[real].max()) < 1e-5  # the harmful forward sees the direction removed
        torch.testing.assert_close(out[:b], clean, atol=1e-5, rtol=1e-5)  # original rows (harmless too) untouched
        torch.testing.assert_close(copies[real], ablated[real], atol=1e-4, rtol=1e-4)  # the copies, in order


def test_refat_reestimates_every_interval(small: dict[str, Any], train_data: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = resolve_train_config({**small, "epochs": 2}, {"condition": "refat"}).with_knobs(
        {"refat_interval": 3, "kd_reply_tokens": 0})
    run = TrainingRun(cfg, train_data)
    steps: list[int] = []
    original = RefusalDirections.estimate

    def spy(self):
        steps.append(run.trainer.state.global_step)
        return original(self)

    monkeypatch.setattr(RefusalDirections, "estimate", spy)
    history = []
    for _ in range(cfg.epochs):
        history.append(run.trainer.train_epoch())
    total = run.trainer.state.global_step
    assert total == 2 * run.trainer.steps_per_epoch >= 4
    expected = [s for s in range(total) if s % 3 == 0]  # step 0: the initial estimate (source model)
    assert steps == expected and run.trainer.state.refat_estimates == len(expected)
    assert all(h["train/ablated_rows"] > 0 for h in history)


def test_fixed_direction_is_the_source_models(small: dict[str, Any], train_data: Path) -> None:
    """refat_interval 0 (DeepRefusal): one estimate before step 1, from the source model, kept."""
    cfg = resolve_train_config(small, {"condition": "random_ablation"}).with_knobs({"kd_reply_tokens": 0})
    run = TrainingRun(cfg, train_data)
    source = copy.deepcopy(run.model)
    run.trainer.train_epoch()
    assert run.trainer.state.refat_estimates == 1
    est = run.trainer.defense.estimator
    again = RefusalDirections(est.layers, cfg.refat_directions, cfg.refat_samples, est.buffer.shape[-1], "cpu")
    again.initialize(source, run.train_set, cfg.teacher_batch_size, "cpu", torch.float32, cfg.seed)
    torch.testing.assert_close(est.directions, again.directions)
    assert est.chosen == again.chosen


def test_random_ablation_masks_layers_and_positions(small: dict[str, Any], train_data: Path) -> None:
    cfg = resolve_train_config(small, {"condition": "random_ablation"}).with_knobs({"kd_reply_tokens": 0})
    run = TrainingRun(cfg, train_data)
    defense = run.trainer.defense
    idx = next(run.trainer.windows(0))[0]
    batch = run.train_set.collate(idx)
    labels = run.train_set.labels.numpy()[idx]
    copies = defense.choose(labels, torch.Generator().manual_seed(0))
    assert copies.tolist() == np.flatnonzero(labels == 1).tolist()  # refat_p = 1: every harmful row
    defense.cfg = cfg.with_knobs({"refat_p": 0.0, "refat_harmless_p": 1.0})  # the option: harmless copies only
    assert defense.choose(labels, torch.Generator()).tolist() == np.flatnonzero(labels == 0).tolist()
    defense.cfg = cfg
    full = batch.rows(torch.cat([torch.arange(len(idx)), copies]))
    m = defense.masks(full, len(idx), torch.Generator().manual_seed(0))
    assert m.shape == (defense.num_layers, len(idx) + len(copies), batch.input_ids.shape[1])
    assert float(m[:, : len(idx)].abs().sum()) == 0.0  # original rows never ablated
    on = m[:, len(idx):]
    assert float(on[:, ~full.attention_mask[len(idx):].bool()].sum()) == 0.0  # nor padding
    layer_share = float((on.sum(-1) > 0).float().mean())
    real = full.attention_mask[len(idx):].bool().expand_as(on)
    pos_share = float(on[real & (on.sum(-1, keepdim=True) > 0)].mean())
    assert 0.3 < layer_share < 0.7 and 0.35 < pos_share < 0.65  # p = 0.5 per layer, 0.5 per position


# ---------------------------------------------------------------------------- reply KD


def test_reply_kd_distils_the_teachers_greedy_replies(small: dict[str, Any], train_data: Path) -> None:
    cfg = resolve_train_config(small, {"condition": "kd_reply"})
    run = TrainingRun(cfg, train_data)
    replies = run.trainer.replies
    assert replies is not None and replies.ids.shape == (len(run.train_set), 16) and replies.logits is not None
    # the targets are the teacher's greedy replies (one prompt at a time, unpadded)
    for i in (0, 1, len(run.train_set) - 1):
        prompt = run.train_set.ids[i].unsqueeze(0)
        gen = run.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                                 do_sample=False, pad_token_id=run.train_set.pad_id,
                                 eos_token_id=run.tokenizer.eos_token_id)[0, prompt.shape[1]:]
        n = int(replies.valid[i].sum())
        assert replies.ids[i, :n].tolist() == gen[:n].tolist()
        assert n == 16 or replies.ids[i, n - 1] == run.tokenizer.eos_token_id  # valid up to the end-of-turn
    # zero for the teacher itself (the untrained student), with cached and with live targets
    idx = next(run.trainer.windows(0))[0]
    batch = run.train_set.collate(idx)
    _, parts = run.trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    assert abs(float(parts["train/kd"])) < 1e-6
    live = teacher_replies(run.model, run.train_set, 16, 64, "cpu", compute_dtype(cfg, "cpu"),
                           run.tokenizer.eos_token_id, cache_mb=0.0)
    assert live.logits is None and torch.equal(live.ids, replies.ids)
    live.teacher = copy.deepcopy(run.model).requires_grad_(False)
    extended = replies.extend(batch)
    torch.testing.assert_close(live.targets(extended), replies.targets(extended), atol=1e-5, rtol=1e-5)
    run.trainer.train_epoch()
    _, parts = run.trainer.compute_loss(batch, torch.Generator().manual_seed(0))
    assert float(parts["train/kd"]) > 1e-4  # the student moved away from the teacher: a real target


# ---------------------------------------------------------------------------- every new condition


@pytest.mark.parametrize("condition", NEW_CONDITIONS)
def test_new_condition_trains(condition: str, small: dict[str, Any], train_data: Path) -> None:
    cfg = resolve_train_config(small, {"condition": condition})
    run = TrainingRun(cfg, train_data)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    m = run.run_epoch()
    assert any(not torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    for key in ("train/loss", "train/kd", "eval/refusal_harmful", "eval/attack_refusal_k1", "objective"):
        assert np.isfinite(m[key]), key
    if cfg.uses_ablation:
        assert m["train/ablated_rows"] > 0 and np.isfinite(m["train/refusal_ablated"])
        assert run.trainer.state.refat_estimates >= 1
    if condition == "cov_kd_refat":
        assert m["train/penalty"] > 0 and run.trainer.state.degenerate_steps == 0


def test_refat_is_deterministic_and_resumes_exactly(small: dict[str, Any], train_data: Path, tmp_path: Path) -> None:
    cfg = resolve_train_config({**small, "epochs": 2}, {"condition": "refat"}).with_knobs({"refat_interval": 1})
    straight = TrainingRun(cfg, train_data)
    straight.run_epoch()
    straight.run_epoch()
    first = TrainingRun(cfg, train_data)
    first.run_epoch()
    first.save(tmp_path / "ckpt")
    resumed = TrainingRun(cfg, train_data, resume_from=tmp_path / "ckpt")
    torch.testing.assert_close(resumed.trainer.defense.estimator.directions,
                               first.trainer.defense.estimator.directions, atol=0, rtol=0)
    resumed.run_epoch()
    assert resumed.trainer.state.refat_estimates == straight.trainer.state.refat_estimates
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    other = TrainingRun(cfg.with_knobs({"seed": 7}), train_data)
    other.run_epoch()
    assert not torch.equal(other.model.state_dict()["lm_head.weight"], first.model.state_dict()["lm_head.weight"])


# ---------------------------------------------------------------------------- layers


def test_refat_layers_are_checked_against_the_model(small: dict[str, Any], source_model: str) -> None:
    model = load_master_model(source_model, "cpu")
    n = get_layout(model).num_layers
    base = resolve_train_config(small, {"condition": "refat"})
    assert resolve_layers(base, n) == list(range(1, int(0.8 * n) + 1))  # the attack's candidate layers
    assert resolve_layers(base.with_knobs({"refat_layers": [2], "refat_directions": 1}), n) == [2]
    with pytest.raises(ConfigError, match=rf"refat_layers \[{n}\].*1\.\.{n - 1}"):
        resolve_layers(base.with_knobs({"refat_layers": [n]}), n)
    too_many = len(resolve_layers(base, n)) + 1  # more directions than candidate layers
    with pytest.raises(ConfigError, match=f"refat_directions={too_many} exceeds"):
        resolve_layers(base.with_knobs({"refat_directions": too_many}), n)
