"""Where the refusal decision forms: a logit lens and a linear probe at every residual index.

For each residual-stream index ℓ = 0 … L (x_ℓ = input of block ℓ, x_L = the last block's output)
at the last prompt position:

* **logit lens** (nostalgebraist 2020; Belrose et al. 2023 "Eliciting latent predictions … with
  the tuned lens" for its caveats): decode x_ℓ with the model's own final norm and unembedding,
  p_ℓ = softmax(W_U · norm(x_ℓ)), and report the mean refusal probability Σ_{t∈R} p_ℓ[t] on
  harmful and on harmless prompts. The *decision layer* is the first ℓ from which the lens puts
  refusal above one half on harmful prompts at every later index too — where the model has
  decided to refuse in its output vocabulary;
* **linear probe** (harmful vs harmless, :func:`irr_ray.core.probes.linear_probe_accuracy`), fitted
  on training prompts and scored on the held-out ones — where harmfulness is *represented*, which in
  a model that knows what it refuses comes earlier than the decision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.core.hooks import capture_residuals
from irr_ray.core.probes import linear_probe_accuracy
from irr_ray.models.chat import tokenize_chat


@torch.no_grad()
def last_position_residuals(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                            batch_size: int) -> torch.Tensor:
    """x_ℓ at the last prompt position for ℓ = 0 … L: [L + 1, N, D] float32."""
    n_layers = model.config.num_hidden_layers
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenize_chat(tokenizer, texts[i:i + batch_size])
        acts = capture_residuals(model, batch["input_ids"], batch["attention_mask"],
                                 layers=list(range(n_layers + 1)), positions=[-1])
        out.append(acts[:, :, 0].float())
    return torch.cat(out, dim=1)


@torch.no_grad()
def logit_lens_refusal(model: PreTrainedModel, residuals: torch.Tensor, refusal_ids: list[int]) -> torch.Tensor:
    """Mean refusal probability of the logit lens per index: residuals [L + 1, N, D] → [L + 1]."""
    logits = model.lm_head(model.model.norm(residuals))
    return logits.softmax(-1)[..., refusal_ids].sum(-1).mean(-1)


def decision_layer(harmful_lens: list[float], threshold: float = 0.5) -> int | None:
    """First index from which the harmful lens stays above ``threshold`` (None: never)."""
    for i in range(len(harmful_lens)):
        if all(p > threshold for p in harmful_lens[i:]):
            return i
    return None


def decision_report(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, refusal_ids: list[int],
                    train: dict[str, list[str]], test: dict[str, list[str]], batch_size: int,
                    seed: int) -> dict[str, Any]:
    """Per residual index: logit-lens refusal probability (harmful / harmless, held-out prompts)
    and held-out linear-probe accuracy; plus the decision layer (module docstring)."""
    res = {split: {kind: last_position_residuals(model, tokenizer, prompts[kind], batch_size)
                   for kind in ("harmful", "harmless")} for split, prompts in (("train", train), ("test", test))}
    lens = {kind: [round(float(p), 4) for p in logit_lens_refusal(model, res["test"][kind], refusal_ids)]
            for kind in ("harmful", "harmless")}
    def xy(split: str, layer: int) -> tuple[torch.Tensor, np.ndarray]:
        h, b = res[split]["harmful"][layer], res[split]["harmless"][layer]
        return torch.cat([h, b]), np.array([1] * len(h) + [0] * len(b))

    probes = []
    for layer in range(res["test"]["harmful"].shape[0]):
        (x_tr, y_tr), (x_te, y_te) = xy("train", layer), xy("test", layer)
        probes.append(round(float(linear_probe_accuracy(x_tr, y_tr, x_te, y_te, seed=seed)), 4))
    return {"index": "residual index l: input of block l (l = L: the last block's output)",
            "logit_lens_refusal": lens, "linear_probe_acc": probes,
            "decision_layer": decision_layer(lens["harmful"])}
