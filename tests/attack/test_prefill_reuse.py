"""Prompt reuse in the behavioural evaluation changes no outcome (the organism, K = 0 … 2).

* the shrinking loop's prefill logits are bit-identical to the separate last-position forward,
  plain and under the ablation hooks, and its replies string-equal to HF ``generate``;
* reply NLLs from the reference's prompt KV cache equal the all-at-once forward to float rounding;
* a whole :class:`BehaviourEvaluator` with ``reuse_prefill`` and the shrinking engine gives the same
  outcome counts, refusal / complied / degenerate shares, first-token refusal probabilities and KL
  (bit for bit) as the plain path (``hf-generate``, separate forwards) — with the model as its own
  reference and with another model as the reference, for directions and for an opaque intervention;
* the speed-only knobs leave the resume keys alone.

Speed: ``irr-ray bench attack --stage`` (never timed here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from irr_ray.attack.behaviour import BehaviourEvaluator, last_position_logprobs, reply_nll
from irr_ray.attack.candidates import encode_batches, mean_difference_candidates
from irr_ray.attack.config import AttackConfig, EvalGenerationConfig
from irr_ray.attack.iterated import progress_key
from irr_ray.attack.prompts import PromptPair
from irr_ray.core.directions import orthonormalize
from irr_ray.core.hooks import ablate_directions
from irr_ray.generation.hf import generate_greedy, generate_greedy_prefill
from irr_ray.generation.prefix import prefill_prompts, reply_nll_from_cache
from irr_ray.judges.base import SubstringRefusalJudge, model_judge_phrases
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.loading import load_model, load_tokenizer
from irr_ray.organism import heldout_eval_prompts

NLL_TOL = 1e-6  # nats: the cached and the all-at-once reply forwards differ only in padding layout
BATCH, NEW = 16, 24


@pytest.fixture(scope="module")
def organism(organism_dir: Path):
    """instruct and base models, 32 + 32 held-out prompts (16 per held-out split), two orthonormal difference-of-means
    directions of the instruct model (the build's layer, positions −1 and −2)."""
    torch.set_num_threads(1)
    root = Path(organism_dir)
    model, tok = load_model(str(root / "instruct"), device="cpu"), load_tokenizer(str(root / "instruct"))
    base = load_model(str(root / "base"), device="cpu")
    model.requires_grad_(False)
    base.requires_grad_(False)
    held = heldout_eval_prompts(16)
    chosen = json.loads((root / "summary.json").read_text())["behaviour"]["direction"]
    cands = mean_difference_candidates(model, encode_batches(tok, held["harmful"], 32),
                                       encode_batches(tok, held["harmless"], 32), [chosen["layer"]], [-1, -2])
    q = orthonormalize(torch.stack([c.vector for c in cands]).float())
    judge = SubstringRefusalJudge(extra_phrases=model_judge_phrases(str(root / "instruct")))
    return model, base, tok, PromptPair(held["harmful"], held["harmless"]), q, judge


def test_prefill_logits_are_the_separate_forward(organism) -> None:
    model, _, tok, pair, q, _ = organism
    prompts = [*pair.harmful, *pair.harmless]
    batches = [tokenize_chat(tok, prompts[i:i + BATCH]) for i in range(0, len(prompts), BATCH)]
    for d in (None, q[:1], q):
        make = None if d is None else (lambda d=d: ablate_directions(model, d))
        res = generate_greedy_prefill(model, tok, prompts, NEW, BATCH, make, keep_prompt_kv=d is None)
        if make is None:
            separate = last_position_logprobs(model, batches)
        else:
            with make():
                separate = last_position_logprobs(model, batches)
        reused = torch.cat([torch.log_softmax(res.first_logits[i:i + BATCH].double(), -1)
                            for i in range(0, len(prompts), BATCH)])
        assert torch.equal(reused, separate)
        assert res.replies == generate_greedy(model, tok, prompts, NEW, BATCH, make, engine="hf-generate")
        if d is None:  # the generation's prompt cache is the one a separate prefill builds
            for (rows, kv), b in zip(res.prompt_kv, batches, strict=True):
                alone = prefill_prompts(model, b)
                assert kv is not None and alone is not None and len(rows) == b["input_ids"].shape[0]
                assert all(torch.equal(x, y) for (k1, v1), (k2, v2) in zip(kv.layers, alone.layers, strict=True)
                           for x, y in ((k1, k2), (v1, v2)))
                assert torch.equal(kv.last_logits, alone.last_logits)


def test_reply_nll_from_the_prompt_cache(organism) -> None:
    model, base, tok, pair, q, _ = organism
    prompts = [*pair.harmful, *pair.harmless]
    replies = generate_greedy(base, tok, prompts, NEW, BATCH, engine="shrinking")  # base: varied lengths
    replies[3] = ""  # no token: NaN
    replies[5] = replies[5].split()[0] if replies[5] else "I"  # one token: NaN
    for reference in (model, base):
        plain, ids = reply_nll(reference, tok, prompts, replies, BATCH)
        cached = torch.cat([reply_nll_from_cache(reference, prefill_prompts(reference, tokenize_chat(
            tok, prompts[i:i + BATCH])), ids[i:i + BATCH], tok.pad_token_id) for i in range(0, len(prompts), BATCH)])
        assert torch.equal(torch.isnan(plain), torch.isnan(cached))
        assert bool(torch.isnan(cached[3])) and bool(torch.isnan(cached[5]))
        finite = torch.isfinite(plain)
        assert int(finite.sum()) > len(prompts) // 2
        assert float((plain[finite] - cached[finite]).abs().max()) <= NLL_TOL


def _evaluator(model, tok, judge, pair, reference, fast: bool) -> BehaviourEvaluator:
    gen = EvalGenerationConfig(batch_size=BATCH, max_new_tokens=NEW, engine="shrinking" if fast else "hf-generate",
                               reuse_prefill=fast)
    return BehaviourEvaluator(model, tok, judge, pair, gen, refusal_ids=[tok.convert_tokens_to_ids("I")],
                              reference=reference)


@pytest.mark.parametrize("who", ["instruct, own reference", "base, instruct reference"])
def test_evaluator_outcomes_are_identical(organism, who: str) -> None:
    model, base, tok, pair, q, judge = organism
    attacked, reference = (model, None) if who.startswith("instruct") else (base, model)
    runs = {}
    for fast in (False, True):
        ev = _evaluator(attacked, tok, judge, pair, reference, fast)
        runs[fast] = [ev.run(None), ev.run(q[:1]), ev.run(q),
                      ev.run(intervention=lambda ev=ev: ablate_directions(attacked, q))]  # opaque, as the suite
        runs[fast].append(ev.bound)
    assert runs[False][-1] == pytest.approx(runs[True][-1], abs=NLL_TOL)  # the calibrated NLL bound
    for plain, fast in zip(runs[False][:-1], runs[True][:-1], strict=True):
        assert plain.harmful.n == fast.harmful.n == len(pair.harmful)
        for cls in ("harmful", "harmless"):
            a, b = getattr(plain, cls), getattr(fast, cls)
            assert (a.refused, a.complied, a.degenerate) == (b.refused, b.complied, b.degenerate)
            assert a.p_refusal == b.p_refusal
            assert a.reply_nll == pytest.approx(b.reply_nll, abs=NLL_TOL)
        assert plain.kl_harmless == fast.kl_harmless
        assert [e["response"] for c in plain.examples.values() for e in c] == \
            [e["response"] for c in fast.examples.values() for e in c]
    if reference is None:  # the instruct model refuses until its directions are ablated
        assert runs[False][2].refusal_harmful < runs[False][0].refusal_harmful


def test_speed_knobs_keep_resume_keys() -> None:
    cfg = AttackConfig()
    plain = cfg.model_copy(update={"generation": cfg.generation.model_copy(
        update={"engine": "hf-generate", "reuse_prefill": False})})
    assert progress_key("m", cfg) == progress_key("m", plain)
    other = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"max_new_tokens": 7})})
    assert progress_key("m", cfg) != progress_key("m", other)
