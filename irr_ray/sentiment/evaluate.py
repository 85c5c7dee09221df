"""The sentiment table: how much sentiment each condition's representations still carry.

For each model and the chosen ``layer`` (a ``hidden_states`` index: 0 = embeddings, ``i`` = output
of block ``i``; default ``int(0.65·L)``), every review becomes one feature vector — the hidden
state mean-pooled over its real tokens. Measured on the held-out reviews:

* **perplexity** ``exp(Σ NLL / #predicted tokens)`` of the LM on the held-out text — did the
  fine-tune keep the model a language model?
* **class-mean gap** ``‖μ_pos − μ_neg‖₂`` of the held-out features — what mean matching drives
  to zero. Reported with ``gap_rel = gap / RMS‖x − μ‖`` too, so a model cannot look matched by
  merely shrinking its activations.
* **linear / MLP probe accuracy**: probes fitted on train-split features, scored on held-out ones
  (chance = 0.5 on the balanced split).

For the baseline model, two post-hoc erasures of its frozen features, fitted on the train split and
applied to both splits, then probed the same way: **LEACE** (the least-squares bound on linear
erasure: after it no linear probe beats chance on the fitting data, Belrose et al. 2023, Thm 3.1)
and **INLP** (``inlp_iterations`` rounds of nullspace projection). The method's claim is that
training-time mean matching closes the gap (≥ 90%) *without* reaching these erasure bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from irr_ray.core.readouts import masked_mean
from irr_ray.errors import ConfigError
from irr_ray.sentiment.config import SentimentEvalConfig
from irr_ray.sentiment.model import encode_texts, lm_labels, load_for_eval

log = logging.getLogger(__name__)


def default_layer(num_layers: int) -> int:
    """``int(0.65·L)`` clamped to a block output ``1..L`` (the sentiment study's probe layer, ARCHITECTURE.md)."""
    return min(num_layers, max(1, int(0.65 * num_layers)))


def resolve_layer(layer: int | None, num_layers: int) -> int:
    if layer is None:
        return default_layer(num_layers)
    if not 0 <= layer <= num_layers:
        raise ConfigError(f"eval.layer={layer} is outside 0..{num_layers} (hidden_states index; 0 = embeddings)")
    return layer


@torch.no_grad()
def pooled_features(model, tokenizer, texts: Sequence[str], layer: int, *, batch_size: int,
                    max_length: int) -> torch.Tensor:
    """Mean-pooled hidden states ``hidden_states[layer]`` of each text → ``[N, D]`` float32."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = encode_texts(tokenizer, list(texts[start:start + batch_size]), max_length)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        out.append(masked_mean(hs.float(), mask).cpu())
    return torch.cat(out)


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int) -> float:
    """``exp`` of the mean next-token NLL over every predicted real token of ``texts``."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        enc = encode_texts(tokenizer, list(texts[start:start + batch_size]), max_length)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = lm_labels(ids, mask)[:, 1:]
        nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(),
                                                       ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return float(np.exp(nll / max(count, 1)))


def class_mean_gap(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """``(‖μ_1 − μ_0‖₂, that / RMS‖x − μ_class‖₂)``: the absolute and the scale-free class-mean gap."""
    from irr_ray.core.probes import to_numpy

    xt = torch.from_numpy(to_numpy(x).astype(np.float64))
    pos = torch.from_numpy(to_numpy(y).reshape(-1) == 1)
    mu_p, mu_n = xt[pos].mean(0), xt[~pos].mean(0)
    gap = float((mu_p - mu_n).norm())
    within = torch.cat([xt[pos] - mu_p, xt[~pos] - mu_n])
    spread = float(within.square().sum(-1).mean().sqrt())
    return gap, gap / spread if spread > 0 else float("inf")


@dataclass(frozen=True)
class SplitFeatures:
    """Pooled features of both splits at one layer of one model."""

    x_train: torch.Tensor
    y_train: np.ndarray
    x_holdout: torch.Tensor
    y_holdout: np.ndarray


@dataclass
class ConditionResult:
    """One model's row (and, for the baseline, the erasure rows computed from its features)."""

    name: str
    model: str
    layer: int
    perplexity: float
    mean_gap: float
    mean_gap_rel: float
    linear_probe: float
    mlp_probe: float
    erasure: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cap(frame, cap: int | None, seed: int):
    """At most ``cap`` rows, half of each class, seeded (the order of kept rows is preserved)."""
    if cap is None or len(frame) <= cap:
        return frame
    rng = np.random.default_rng(seed)
    labels = frame["label"].to_numpy()
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: cap // 2] for c in (0, 1)])
    return frame.iloc[np.sort(keep)].reset_index(drop=True)


def split_features(model, tokenizer, data_dir: str | Path, layer: int, cfg: SentimentEvalConfig) -> SplitFeatures:
    from irr_ray.sentiment.data import read_split

    train = _cap(read_split(data_dir, "train"), cfg.max_probe_train, cfg.probe_seed)
    hold = _cap(read_split(data_dir, "holdout"), cfg.max_probe_holdout, cfg.probe_seed)
    kw = {"batch_size": cfg.batch_size, "max_length": cfg.max_length}
    return SplitFeatures(  # labels copied: pandas hands out read-only arrays
        pooled_features(model, tokenizer, train["text"].tolist(), layer, **kw), np.array(train["label"]),
        pooled_features(model, tokenizer, hold["text"].tolist(), layer, **kw), np.array(hold["label"]),
    )


def probe_scores(f: SplitFeatures, cfg: SentimentEvalConfig, mlp: bool = True) -> tuple[float, float | None]:
    """(linear, MLP) held-out probe accuracy on ``f`` (MLP ``None`` when ``mlp`` is False)."""
    from irr_ray.core.probes import linear_probe_accuracy, mlp_probe_accuracy

    lin = linear_probe_accuracy(f.x_train, f.y_train, f.x_holdout, f.y_holdout, seed=cfg.probe_seed)
    if not mlp:
        return lin, None
    acc = mlp_probe_accuracy(f.x_train, f.y_train, f.x_holdout, f.y_holdout, seed=cfg.probe_seed,
                             hidden_sizes=tuple(cfg.mlp_hidden_sizes), max_iter=cfg.mlp_max_iter)
    return lin, acc


def erasure_scores(f: SplitFeatures, cfg: SentimentEvalConfig) -> dict[str, dict[str, float | None]]:
    """LEACE and INLP fitted on the train features, applied to both splits, then probed."""
    from irr_ray.core.erasure import inlp, leace_erase

    x_tr, x_ho = leace_erase(f.x_train, f.y_train, f.x_holdout)
    leace = SplitFeatures(x_tr.float(), f.y_train, x_ho.float(), f.y_holdout)
    lin, mlp = probe_scores(leace, cfg, cfg.erasure_mlp)
    gap, gap_rel = class_mean_gap(leace.x_holdout, f.y_holdout)
    res = inlp(f.x_train, f.y_train, f.x_holdout, f.y_holdout, n_iterations=cfg.inlp_iterations,
               seed=cfg.probe_seed)
    projected = SplitFeatures(torch.from_numpy(res(f.x_train)).float(), f.y_train,
                              torch.from_numpy(res(f.x_holdout)).float(), f.y_holdout)
    inlp_lin, inlp_mlp = probe_scores(projected, cfg, cfg.erasure_mlp)
    inlp_gap, inlp_gap_rel = class_mean_gap(projected.x_holdout, f.y_holdout)
    return {
        "leace": {"linear_probe": lin, "mlp_probe": mlp, "mean_gap": gap, "mean_gap_rel": gap_rel},
        "inlp": {"linear_probe": inlp_lin, "mlp_probe": inlp_mlp, "mean_gap": inlp_gap,
                 "mean_gap_rel": inlp_gap_rel, "directions_removed": float(len(res.directions))},
    }


def evaluate_model(name: str, model_path: str, data_dir: str | Path, cfg: SentimentEvalConfig, *,
                   erasure: bool = False, device: str = "cpu") -> ConditionResult:
    """Every measurement of one model (plus LEACE / INLP on its frozen features when ``erasure``)."""
    from irr_ray.models.families import get_layout
    from irr_ray.sentiment.data import read_split

    model, tokenizer = load_for_eval(model_path, device)
    layer = resolve_layer(cfg.layer, get_layout(model).num_layers)
    feats = split_features(model, tokenizer, data_dir, layer, cfg)
    hold_texts = _cap(read_split(data_dir, "holdout"), cfg.max_probe_holdout, cfg.probe_seed)["text"].tolist()
    ppl = perplexity(model, tokenizer, hold_texts, batch_size=cfg.batch_size, max_length=cfg.max_length)
    gap, gap_rel = class_mean_gap(feats.x_holdout, feats.y_holdout)
    lin, mlp = probe_scores(feats, cfg)
    result = ConditionResult(name, model_path, layer, ppl, gap, gap_rel, lin, mlp)
    if erasure:
        result.erasure = erasure_scores(feats, cfg)
    log.info("sentiment eval %s: ppl %.2f gap %.4f linear %.3f mlp %.3f", name, ppl, gap, lin, mlp)
    return result


# --- the table ----------------------------------------------------------------------------------------
TABLE_COLUMNS = ("method", "linear_probe", "mlp_probe", "mean_gap", "gap_closed", "mean_gap_rel", "perplexity")


def table_rows(results: Sequence[ConditionResult], baseline: str) -> list[dict[str, Any]]:
    """Rows in the method's order: each model, then LEACE / INLP on the baseline's frozen features.
    ``gap_closed = 1 − gap / gap_baseline``; post-hoc rows have no perplexity (they edit one layer's
    features, not the model)."""
    by_name = {r.name: r for r in results}
    if baseline not in by_name:
        raise ConfigError(f"baseline {baseline!r} is not among the evaluated conditions {sorted(by_name)}")
    base_gap = by_name[baseline].mean_gap
    rows = []
    for r in results:
        rows.append({"method": r.name, "linear_probe": r.linear_probe, "mlp_probe": r.mlp_probe,
                     "mean_gap": r.mean_gap, "gap_closed": 1.0 - r.mean_gap / base_gap if base_gap else 0.0,
                     "mean_gap_rel": r.mean_gap_rel, "perplexity": r.perplexity})
    for kind, label in (("leace", "LEACE (post-hoc, on {b})"), ("inlp", "INLP (post-hoc, on {b})")):
        e = by_name[baseline].erasure.get(kind)
        if e is not None:
            rows.append({"method": label.format(b=baseline), "linear_probe": e["linear_probe"],
                         "mlp_probe": e["mlp_probe"], "mean_gap": e["mean_gap"],
                         "gap_closed": 1.0 - e["mean_gap"] / base_gap if base_gap else 0.0,
                         "mean_gap_rel": e["mean_gap_rel"], "perplexity": None})
    return rows


def format_table(rows: Sequence[dict[str, Any]], layer: int | None = None) -> str:
    """Markdown table (chance = 0.50 for the probes)."""
    head = "| Method | Linear probe | MLP probe | Mean gap (L2) | Gap closed | Gap / spread | Perplexity |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        ppl = "—" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        mlp = "—" if r["mlp_probe"] is None else f"{r['mlp_probe']:.3f}"  # None: not measured
        lines.append(f"| {r['method']} | {r['linear_probe']:.3f} | {mlp} | {r['mean_gap']:.4f} | "
                     f"{100 * r['gap_closed']:.1f}% | {r['mean_gap_rel']:.4f} | {ppl} |")
    note = f"Held-out accuracy, chance = 0.50; features mean-pooled at hidden_states[{layer}]." if layer is not None \
        else "Held-out accuracy, chance = 0.50."
    return note + "\n\n" + "\n".join(lines) + "\n"
