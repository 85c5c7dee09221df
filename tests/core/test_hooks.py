"""Residual capture, three-site ablation (plain and batched) and activation addition on a tiny random
model of every supported family (built by tiny_models.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import (
    ResidualCapture,
    ablate_directions,
    ablate_directions_batched,
    add_activation,
    capture_residuals,
    left_pad_position_ids,
    restart_at,
)

try:  # tests/ as a package
    from .tiny_models import FAMILIES, HIDDEN, N_LAYERS, left_padded_batch, tiny_model
except ImportError:  # rootdir-relative import (no __init__.py)
    from tiny_models import FAMILIES, HIDDEN, N_LAYERS, left_padded_batch, tiny_model

ALL_SITES = list(range(N_LAYERS + 1))  # every block input and the last block's output


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and contention on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_orthonormal(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return orthonormalize(torch.randn(k, HIDDEN, generator=g, dtype=torch.float64)).float()


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(
            **batch, position_ids=left_pad_position_ids(batch["attention_mask"]), use_cache=False
        ).logits


def _hooks(model: nn.Module) -> set[tuple[str, int]]:
    """Ids of all forward (pre-)hooks; HF installs its own output-capturing hooks on first use."""
    return {
        (name, hid) for name, m in model.named_modules() for hid in (*m._forward_pre_hooks, *m._forward_hooks)
    }


def _rows(batch: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in batch.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_hidden_states_on_left_padded_batch(family: str) -> None:
    model, batch = tiny_model(family), left_padded_batch()
    with torch.no_grad():
        ref = model(
            **batch, position_ids=left_pad_position_ids(batch["attention_mask"]), output_hidden_states=True
        ).hidden_states
    before = _hooks(model)  # after HF's output_hidden_states installed its own hooks
    ref_stack = torch.stack(ref[:N_LAYERS])  # hidden_states[l] = input of block l for l < L
    acts = capture_residuals(model, batch["input_ids"], batch["attention_mask"])
    assert acts.shape == (N_LAYERS, 3, 7, HIDDEN)
    torch.testing.assert_close(acts, ref_stack, rtol=0, atol=1e-6)

    some = capture_residuals(
        model, batch["input_ids"], batch["attention_mask"], layers=[1], positions=[-3, -1]
    )
    torch.testing.assert_close(some, ref_stack[1:2, :, [4, 6]], rtol=0, atol=1e-6)
    assert _hooks(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_of_padded_row_equals_unpadded_row(family: str) -> None:
    """Real-token position ids make a left-padded row's activations independent of the padding."""
    model, batch = tiny_model(family), left_padded_batch()
    padded = capture_residuals(
        model, batch["input_ids"], batch["attention_mask"], layers=ALL_SITES, positions=[-3, -2, -1]
    )
    alone = capture_residuals(
        model,
        batch["input_ids"][2:, 4:],
        batch["attention_mask"][2:, 4:],
        layers=ALL_SITES,
        positions=[-3, -2, -1],
    )
    torch.testing.assert_close(padded[:, 2:], alone, rtol=1e-4, atol=1e-5)


def test_residual_capture_streams_and_rejects_misuse() -> None:
    model = tiny_model("LlamaConfig")
    batches = [left_padded_batch(seed=s) for s in (1, 2)]
    before = _hooks(model)
    with ResidualCapture(model, layers=[0, 2], positions=[-1]) as cap:
        streamed = [cap.run(b["input_ids"], b["attention_mask"]) for b in batches]
        # A plain forward inside the context records all layers (no early stop) for the caller.
        _logits(model, batches[0])
        torch.testing.assert_close(cap.residuals, streamed[0])
    for b, acts in zip(batches, streamed, strict=True):
        torch.testing.assert_close(
            acts, capture_residuals(model, b["input_ids"], b["attention_mask"], layers=[0, 2], positions=[-1])
        )
    assert _hooks(model) == before

    right_padded = {k: v.flip(1) for k, v in batches[0].items()}
    with pytest.raises(ValueError, match="left padding"):
        capture_residuals(model, right_padded["input_ids"], right_padded["attention_mask"], positions=[-1])
    with pytest.raises(ValueError, match="layers"):
        capture_residuals(model, batches[0]["input_ids"], None, layers=[N_LAYERS + 1])
    with pytest.raises(ValueError, match="negative"):
        capture_residuals(model, batches[0]["input_ids"], None, positions=[0])
    assert _hooks(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_ablation_equals_one_set_at_a_time(family: str) -> None:
    """Rows g·n … g·n+n−1 ablated with set g == each set applied alone; zero padding rows are inert."""
    model, prompts = tiny_model(family), left_padded_batch((6, 4))
    before = _hooks(model)
    k_per_set = (1, 3, 2)
    sets = [_random_orthonormal(k, seed=10 + g) for g, k in enumerate(k_per_set)]
    padded = torch.zeros(len(sets), max(k_per_set), HIDDEN)
    for g, d in enumerate(sets):
        padded[g, : d.shape[0]] = d

    n = prompts["input_ids"].shape[0]
    tiled = {k: v.repeat(len(sets), 1) for k, v in prompts.items()}  # [set0: p0 p1, set1: p0 p1, …]
    with ablate_directions_batched(model, padded):
        batched = _logits(model, tiled)
    for g, d in enumerate(sets):
        with ablate_directions(model, d):
            alone = _logits(model, prompts)
        torch.testing.assert_close(batched[g * n : (g + 1) * n], alone, rtol=1e-4, atol=1e-5)

    # One set per row (n = 1): row b of a 3-row batch gets set b.
    rows = _rows(left_padded_batch(), [0, 1, 2])
    with ablate_directions_batched(model, padded):
        per_row = _logits(model, rows)
    for g, d in enumerate(sets):
        with ablate_directions(model, d):
            torch.testing.assert_close(
                per_row[g : g + 1], _logits(model, _rows(rows, [g])), rtol=1e-4, atol=1e-5
            )
    assert _hooks(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_ablated_directions_absent_from_every_layer(family: str) -> None:
    model, batch = tiny_model(family), left_padded_batch()
    d = _random_orthonormal(2, seed=3)
    mask = batch["attention_mask"].bool()

    def relative_projection(acts: torch.Tensor) -> torch.Tensor:  # [sites, B, T, D] -> max over real tokens
        rel = (acts @ d.T).norm(dim=-1) / acts.norm(dim=-1)
        return rel[:, mask].amax(dim=1)

    clean = capture_residuals(model, batch["input_ids"], batch["attention_mask"], layers=ALL_SITES)
    assert bool((relative_projection(clean) > 1e-2).all())  # the directions are there to begin with
    with ablate_directions(model, d):
        after = capture_residuals(model, batch["input_ids"], batch["attention_mask"], layers=ALL_SITES)
    assert float(relative_projection(after).max()) < 1e-4

    # Batched form: set 1 (zero-padded to K = 2) is absent from its rows, row 0 is untouched.
    sets = torch.stack([torch.zeros(2, HIDDEN), torch.cat([d[:1], torch.zeros(1, HIDDEN)])])
    two = _rows(batch, [0, 0])
    with ablate_directions_batched(model, sets):
        acts = capture_residuals(model, two["input_ids"], two["attention_mask"], layers=ALL_SITES)
    torch.testing.assert_close(acts[:, 0], clean[:, 0], rtol=1e-4, atol=1e-5)
    assert float((acts[:, 1] @ d[0]).abs().max() / acts[:, 1].norm(dim=-1).min()) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_add_activation_shifts_block_input_by_coeff_v(family: str) -> None:
    model, batch = tiny_model(family), left_padded_batch((5, 5, 5, 5))
    before = _hooks(model)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(HIDDEN, generator=g)
    base = capture_residuals(model, batch["input_ids"], batch["attention_mask"])
    with add_activation(model, 1, v, coeff=2.5):
        shifted = capture_residuals(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(shifted[0], base[0])
    torch.testing.assert_close(shifted[1] - base[1], (2.5 * v).expand_as(base[1]), rtol=0, atol=1e-5)

    # Per-set vectors and layers: rows 0-1 get v0 at block 0, rows 2-3 get v1 at block 1.
    vs = torch.randn(2, HIDDEN, generator=g)
    with add_activation(model, [0, 1], vs):
        both = capture_residuals(model, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(both[0, :2] - base[0, :2], vs[0].expand(2, 5, HIDDEN), rtol=0, atol=1e-5)
    torch.testing.assert_close(both[:, 2:][0], base[:, 2:][0])
    torch.testing.assert_close(both[1, 2:] - base[1, 2:], vs[1].expand(2, 5, HIDDEN), rtol=0, atol=1e-5)
    # Per-set vectors at one layer.
    with add_activation(model, 1, vs, coeff=-1.0):
        one_layer = capture_residuals(model, batch["input_ids"], batch["attention_mask"])
    expected = -vs.repeat_interleave(2, dim=0)[:, None, :].expand(4, 5, HIDDEN)
    torch.testing.assert_close(one_layer[1] - base[1], expected, rtol=0, atol=1e-5)
    assert _hooks(model) == before


@pytest.mark.parametrize("family", ["LlamaConfig", "Gemma2Config", "GPT2Config"])
def test_hooks_removed_after_context_even_on_exception(family: str) -> None:
    model, batch = tiny_model(family), left_padded_batch()
    reference = _logits(model, batch)
    before = _hooks(model)
    d = _random_orthonormal(1, seed=5)
    contexts = [
        lambda: ablate_directions(model, d),
        lambda: ablate_directions_batched(model, d.expand(3, 1, HIDDEN)),
        lambda: add_activation(model, 0, d[0]),
        lambda: ResidualCapture(model, layers=[1]),
    ]
    for make in contexts:
        with make():
            assert _hooks(model) > before
        assert _hooks(model) == before
        with pytest.raises(KeyError), make():
            raise KeyError("boom")
        assert _hooks(model) == before
        torch.testing.assert_close(_logits(model, batch), reference, rtol=0, atol=0)


def test_ablation_rejects_bad_directions_and_batches() -> None:
    model, batch = tiny_model("Qwen2Config"), left_padded_batch()
    before = _hooks(model)
    raw = torch.randn(2, HIDDEN)
    with pytest.raises(ValueError, match="orthonormal"), ablate_directions(model, raw):
        pass
    with pytest.raises(ValueError, match="orthonormal"), ablate_directions_batched(model, 0.5 * raw[None]):
        pass
    with pytest.raises(ValueError, match="hidden size"), ablate_directions(model, torch.eye(2, HIDDEN + 1)):
        _logits(model, batch)
    with (
        pytest.raises(ValueError, match="multiple"),
        ablate_directions_batched(model, torch.eye(1, HIDDEN).expand(2, 1, HIDDEN)),
    ):
        _logits(model, batch)  # 3 rows, 2 sets
    with (
        pytest.raises(ValueError, match="out of range"),
        add_activation(model, N_LAYERS, torch.zeros(HIDDEN)),
    ):
        pass
    with ablate_directions(model, torch.zeros(0, HIDDEN)):  # K = 0: no-op
        torch.testing.assert_close(_logits(model, batch), _logits(model, batch))
    assert _hooks(model) == before


def test_ablation_in_bfloat16_model() -> None:
    """Hooks run in the model's dtype: float32 directions are cast to bf16, the projection is exact
    to bf16 precision."""
    model = copy.deepcopy(tiny_model("LlamaConfig")).to(torch.bfloat16)  # never touch the shared model
    batch = left_padded_batch()
    d = _random_orthonormal(1, seed=6)
    with ablate_directions(model, d):
        acts = capture_residuals(model, batch["input_ids"], batch["attention_mask"], layers=ALL_SITES)
    assert acts.dtype == torch.bfloat16
    rel = (acts.float() @ d.T).abs().squeeze(-1) / acts.float().norm(dim=-1)
    assert float(rel[:, batch["attention_mask"].bool()].max()) < 2e-2


@pytest.mark.parametrize("family", ["LlamaConfig", "Gemma3TextConfig", "GPT2Config"])
def test_ablation_holds_through_cached_generation(family: str) -> None:
    """HF generate's one-token decode steps (KV cache) are ablated too: each greedy token equals the
    argmax of a full, uncached forward over the generated sequence under the same (batched) ablation."""
    model, batch = tiny_model(family), left_padded_batch()
    sets = torch.stack([_random_orthonormal(2, seed=s) for s in (7, 8, 9)])
    new = 4
    with ablate_directions_batched(model, sets), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        full = {"input_ids": out, "attention_mask": torch.cat(
            [batch["attention_mask"], torch.ones(3, new, dtype=torch.long)], dim=1)}
        logits = _logits(model, full)
    torch.testing.assert_close(logits[:, -new - 1:-1].argmax(-1), out[:, -new:], rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_restart_at_equals_the_full_forward(family: str) -> None:
    """Blocks below ``layer`` skipped and x_layer put back from a capture (made under the same
    ablation): the logits equal the full forward's, also with ablation and activation addition
    hooked at that layer (the attack's induce pass); every block and hook is restored on exit."""
    model, batch = tiny_model(family), left_padded_batch()
    before = _hooks(model)
    d = _random_orthonormal(1, seed=5)
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(6))
    layer = N_LAYERS - 1
    with ablate_directions(model, d):
        x = capture_residuals(model, batch["input_ids"], batch["attention_mask"], layers=[layer])[0]
        with add_activation(model, layer, v, coeff=2.0):
            full = _logits(model, batch)
        with restart_at(model, layer, x), add_activation(model, layer, v, coeff=2.0):
            restarted = _logits(model, batch)
    torch.testing.assert_close(restarted, full, rtol=1e-4, atol=1e-5)
    # and the skipped blocks really ran nothing: garbage put back gives other logits
    with restart_at(model, layer, torch.zeros_like(x)):
        assert not torch.allclose(_logits(model, batch), full, atol=1e-3)
    assert _hooks(model) == before
    assert all("forward" not in block.__dict__ for block in model.modules())
    with pytest.raises(ValueError, match="out of range"):
        with restart_at(model, N_LAYERS, x):
            pass
