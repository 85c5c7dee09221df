"""Class-balanced batches, the validation split, study-dataset validation and collation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from irr_ray.core.losses import cov_penalty, mean_penalty
from irr_ray.errors import DataValidationError
from irr_ray.train.data import Batch, PromptSet, class_balanced_batches, load_split, split_validation


@pytest.mark.parametrize("micro_batch", [2, 4, 8, 32])
def test_batches_are_class_balanced_and_never_degenerate(micro_batch: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.r_[np.ones(61, int), np.zeros(97, int)])  # unbalanced on purpose
    h = torch.randn(len(labels), 16)
    for epoch in range(3):
        batches = class_balanced_batches(labels, micro_batch, seed=1, epoch=epoch)
        assert len(batches) == 61 // (micro_batch // 2)
        seen = np.concatenate(batches)
        assert len(set(seen.tolist())) == len(seen)  # no row twice in an epoch
        for b in batches:
            assert labels[b].sum() == micro_batch // 2  # exactly half harmful
            y = torch.as_tensor(labels[b])
            assert not mean_penalty(h[b], y).degenerate
            if micro_batch >= 4:
                assert not cov_penalty(h[b], y).degenerate


def test_batches_are_seeded_per_epoch() -> None:
    labels = np.r_[np.ones(40, int), np.zeros(40, int)]
    a = class_balanced_batches(labels, 8, seed=3, epoch=0)
    b = class_balanced_batches(labels, 8, seed=3, epoch=0)
    c = class_balanced_batches(labels, 8, seed=3, epoch=1)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert any((x != y).any() for x, y in zip(a, c, strict=True))


def test_too_few_per_class_is_a_clear_error() -> None:
    with pytest.raises(DataValidationError, match="needs >= 4 prompts per class"):
        class_balanced_batches(np.r_[np.ones(3, int), np.zeros(30, int)], 8, seed=0, epoch=0)


def test_validation_split_is_balanced_and_disjoint() -> None:
    labels = np.r_[np.ones(50, int), np.zeros(70, int)]
    train, val = split_validation(labels, 10, seed=0)
    assert labels[val].sum() == 10 and len(val) == 20
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    train2, val2 = split_validation(labels, 10, seed=0)
    assert (val == val2).all()


def _write(tmp_path, frame: pd.DataFrame):
    frame.to_parquet(tmp_path / "train.parquet")
    return tmp_path


def test_load_split_names_the_problem(tmp_path) -> None:
    with pytest.raises(DataValidationError, match="train.parquet not found"):
        load_split(tmp_path)
    good = pd.DataFrame({"prompt": ["a", "b", "c", "d"], "prompt_harm_label": ["harmful", "unharmful"] * 2})
    assert len(load_split(_write(tmp_path, good))) == 4
    with pytest.raises(DataValidationError, match="missing column.*prompt_harm_label"):
        load_split(_write(tmp_path, good[["prompt"]]))
    bad = good.assign(prompt_harm_label=["harmful", "maybe", "unharmful", None])
    with pytest.raises(DataValidationError, match=r"bad rows \[1, 3\]"):
        load_split(_write(tmp_path, bad))
    with pytest.raises(DataValidationError, match=r"empty or non-string prompt in rows \[2\]"):
        load_split(_write(tmp_path, good.assign(prompt=["a", "b", " ", "d"])))


def test_collate_left_pads_with_real_token_positions() -> None:
    ids = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([1, 2, 3, 4])]
    ps = PromptSet(ids, torch.tensor([1, 0, 1]), ["", "", ""], pad_id=0)
    b = ps.collate(np.array([0, 1, 2]))
    assert b.input_ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8], [1, 2, 3, 4]]
    assert b.attention_mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    assert b.position_ids.tolist() == [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]]
    # padding and each row's first real token are never targets (nothing real precedes them)
    assert b.lm_labels.tolist() == [[-100, -100, 6, 7], [-100, -100, -100, -100], [-100, 2, 3, 4]]
    assert b.labels.tolist() == [1, 0, 1] and b.index.tolist() == [0, 1, 2]


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         initializer_range=0.2)  # peaked predictions, not a near-uniform loss
    return LlamaForCausalLM(config).eval()


def _rows() -> PromptSet:
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, 64, (n,), generator=g) for n in (5, 3, 7, 4, 7, 2)]
    return PromptSet(ids, torch.tensor([1, 0, 1, 0, 1, 0]), [""] * 6, pad_id=0)


def _more_padding(b: Batch, extra: int) -> Batch:
    """The same rows left-padded ``extra`` columns wider (as in a batch with one longer row)."""
    pad = (extra, 0)
    return Batch(torch.nn.functional.pad(b.input_ids, pad, value=0), torch.nn.functional.pad(b.attention_mask, pad),
                 torch.nn.functional.pad(b.position_ids, pad), b.labels, b.index)


def _loss(model, b: Batch, labels: torch.Tensor | None = None) -> torch.Tensor:
    return model(**b.model_inputs(), labels=b.lm_labels if labels is None else labels, use_cache=False).loss


@torch.no_grad()
def test_lm_loss_does_not_depend_on_padding() -> None:
    """Left padding (any amount) and right padding of the same rows give the same LM loss; the
    right-padded reference is HF's ``labels=input_ids`` with padding masked (the method's convention)."""
    model, rows = _tiny_llama(), _rows()
    b = rows.collate(np.arange(len(rows)))
    loss = _loss(model, b)
    for extra in (1, 3):
        torch.testing.assert_close(_loss(model, _more_padding(b, extra)), loss, rtol=0, atol=1e-5)

    ids = torch.nn.utils.rnn.pad_sequence(rows.ids, batch_first=True, padding_value=0)  # right-padded
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(t) for t in rows.ids], batch_first=True)
    ref = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False).loss
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-5)
    # same targets on both sides: sum(len - 1) tokens
    assert int((b.lm_labels[:, 1:] != -100).sum()) == sum(len(t) - 1 for t in rows.ids)

    # Each row's loss is its own: the batch mean is the token-weighted mean of the rows alone.
    total, count = 0.0, 0
    for i in range(len(rows)):
        single = rows.collate(np.array([i]))
        n = int((single.lm_labels[:, 1:] != -100).sum())
        total, count = total + float(_loss(model, single)) * n, count + n
    assert abs(total / count - float(loss)) < 1e-5

    # The old labels (padding masked only) made the first real token a target predicted from padding.
    def old(batch: Batch) -> torch.Tensor:
        return batch.input_ids.masked_fill(batch.attention_mask == 0, -100)

    wide = _more_padding(b, 1)
    assert abs(float(_loss(model, wide, old(wide))) - float(_loss(model, b, old(b)))) > 1e-3  # 100x atol
