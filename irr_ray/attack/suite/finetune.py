"""The open-weights threat: LoRA fine-tuning on harmful prompts paired with compliant answers.

Whoever holds the weights can fine-tune refusal away with a few dozen harmful examples and a few
optimizer steps (Qi et al. 2023, "Fine-tuning aligned language models compromises safety, even when
users do not intend to!"; Lermen et al. 2023, "LoRA fine-tuning efficiently undoes safety training
in Llama 2-Chat 70B"). The budget is the number of optimizer steps.

**Data.** ``n_examples`` harmful prompts of the study's *train* split (``prompts.extract``, then
``prompts.score`` / ``prompts.probe``; never the held-out evaluation prompts), each with a compliant
answer: ``answers: base`` — the greedy reply of the study's base model (replies the study's judge
calls refusals are dropped); ``answers: dataset`` — the dataset's own responses labelled
``compliance`` to harmful prompts (``train.parquet``). The pairs are cached in
``<work_dir>/finetune/pairs.json``.

**Loss.** For a prompt x rendered by the chat template and its answer y = (y_1 … y_m, ⟨eot⟩)
(at most ``max_answer_tokens`` answer tokens; the end-of-turn token only after a complete answer),
the causal-LM cross-entropy on the answer tokens only,

    L(θ) = − 1/|batch tokens| · Σ_(x,y) Σ_t log p_θ(y_t | x, y_<t),

averaged over the answer tokens of a batch of ``batch_size`` pairs (seeded order, epoch after epoch).

**LoRA** (Hu et al. 2021, "LoRA: Low-rank adaptation of large language models"). Every adapted
weight W ∈ R^{out×in} stays frozen and is used as W + s·B A with A ∈ R^{r×in}, B ∈ R^{out×r},
s = α / r; A starts uniform in ±1/√in (PyTorch's Linear initialisation, as PEFT), B = 0, so training
starts from the unattacked model. Adapted matrices by family: Llama-like ``q_proj``, ``v_proj``,
``o_proj``, ``down_proj`` (``qkv_proj`` where q/v are fused); GPT-2 ``c_attn``, ``c_proj`` (Conv1D,
weight stored transposed: W + s·(B A)ᵀ). The adapter layers are those of the PEFT library, injected
into the shared model for training only and unloaded afterwards (the model's modules, parameters,
``requires_grad`` flags and train/eval mode are as before). Training runs in eval mode (no dropout),
AdamW (no weight decay on the adapter) at a constant learning rate — so the model after b steps does
not depend on the rest of the budget schedule — with gradients clipped to norm 1 (the trainer's
default), bf16 autocast on CUDA as in the trainer. Initialisation and batch order come from
``torch.Generator`` seeded with the study seed: two runs give bit-identical adapters on one device.

**Budget b** continues training from the previous budget to b optimizer steps in total; the
adapter tensors, the optimizer state and the loss log at b are saved under ``<work_dir>/finetune/``
so a resumed run loads them instead of training again. The intervention swaps the merged weights
W + s·B A into the model (:func:`~irr_ray.attack.suite.base.patched_parameters`; computed when the
intervention is entered, restored on exit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from irr_ray.attack.suite.base import AttackContext, BudgetStep, SuiteAttack, patched_parameters
from irr_ray.attack.suite.settings import FinetuneSettings
from irr_ray.errors import DataValidationError, IrrRayError, UnsupportedArchitectureError
from irr_ray.models.chat import format_chat
from irr_ray.train.trainer import autocast
from irr_ray.utils.files import atomic_path, file_sha256, write_json_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ADAPTER = "irr_ray_finetune"  # PEFT adapter name while injected
MAX_GRAD_NORM = 1.0  # the trainer's default clipping
# Adapted matrices by family (module-name suffixes), tried in order; the first that matches wins.
TARGET_SETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj", "o_proj", "down_proj"),  # Llama, Mistral, Qwen, Gemma, OLMo, Granite, GLM, …
    ("qkv_proj", "o_proj", "down_proj"),  # Phi-3 (fused q/k/v)
    ("c_attn", "c_proj"),  # GPT-2 (Conv1D)
)
# Compliant-answer columns of train.parquet: the raw label is ``response_refusal_label`` in
# WildGuardMix-shaped files and ``wildguard_reference_label`` in the data stage's split.
REFUSAL_LABEL_COLUMNS = ("response_refusal_label", "wildguard_reference_label")


# --------------------------------------------------------------------------------------- targets

def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def lora_targets(model: nn.Module) -> tuple[list[str], bool]:
    """Module names adapted in ``model`` (sorted) and whether they are GPT-2 Conv1Ds (W stored
    [in, out]) — the first of :data:`TARGET_SETS` whose suffixes name Linear / Conv1D modules."""
    leaves = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) or _is_conv1d(m)}
    for suffixes in TARGET_SETS:
        names = sorted(n for n in leaves if n.rsplit(".", 1)[-1] in suffixes)
        if any(n.rsplit(".", 1)[-1] == suffixes[0] for n in names):
            conv = {_is_conv1d(leaves[n]) for n in names}
            if len(conv) > 1:
                raise UnsupportedArchitectureError(
                    f"finetune: {type(model).__name__} mixes Linear and Conv1D in {list(suffixes)}")
            return names, conv.pop()
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    raise UnsupportedArchitectureError(
        f"finetune: no LoRA target modules in model type {model_type!r} (looked for "
        + " | ".join(",".join(s) for s in TARGET_SETS) + ")")


def _in_out(module: nn.Module, conv1d: bool) -> tuple[int, int]:
    w = module.weight
    return (int(w.shape[0]), int(w.shape[1])) if conv1d else (int(w.shape[1]), int(w.shape[0]))


# --------------------------------------------------------------------------------------- adapter

@dataclass
class LoraAdapter:
    """The trainable tensors: ``A[name]`` [r, in] and ``B[name]`` [out, r] per adapted module, float32."""

    names: list[str]
    conv1d: bool
    rank: int
    alpha: float
    A: dict[str, nn.Parameter]
    B: dict[str, nn.Parameter]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def init(cls, model: nn.Module, rank: int, alpha: float, seed: int) -> LoraAdapter:
        """A uniform in ±1/√in (seeded), B = 0 (Hu et al. 2021: the adapted model starts as the model)."""
        names, conv1d = lora_targets(model)
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        A, B = {}, {}
        for name in names:
            fan_in, fan_out = _in_out(model.get_submodule(name), conv1d)
            bound = 1.0 / math.sqrt(fan_in)
            a = (torch.rand(rank, fan_in, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            A[name] = nn.Parameter(a.to(device))
            B[name] = nn.Parameter(torch.zeros(fan_out, rank, dtype=torch.float32, device=device))
        return cls(names, conv1d, rank, alpha, A, B)

    def parameters(self) -> list[nn.Parameter]:
        return [t for name in self.names for t in (self.A[name], self.B[name])]

    def tensors(self) -> dict[str, torch.Tensor]:
        """PEFT's key names (``base_model.model.<module>.lora_A.weight``), detached CPU copies."""
        out = {}
        for name in self.names:
            out[f"base_model.model.{name}.lora_A.weight"] = self.A[name].detach().cpu().clone()
            out[f"base_model.model.{name}.lora_B.weight"] = self.B[name].detach().cpu().clone()
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.names:
                self.A[name].copy_(tensors[f"base_model.model.{name}.lora_A.weight"])
                self.B[name].copy_(tensors[f"base_model.model.{name}.lora_B.weight"])

    def delta(self, name: str) -> torch.Tensor:
        """s·B A in the layout of the module's weight (transposed for Conv1D), float32."""
        d = self.scale * (self.B[name].detach().float() @ self.A[name].detach().float())
        return d.T if self.conv1d else d

    def merged_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """{``<module>.weight``: W + s·B A} for every adapted weight of the (unadapted) model."""
        params = dict(model.named_parameters(remove_duplicate=False))
        out = {}
        for name in self.names:
            w = params[f"{name}.weight"]
            out[f"{name}.weight"] = (w.detach().float() + self.delta(name).to(w.device)).to(w.dtype)
        return out

    def snapshot(self) -> LoraAdapter:
        """A frozen copy (what one budget's intervention applies while training continues)."""
        copy = {k: nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in self.A.items()}
        return LoraAdapter(list(self.names), self.conv1d, self.rank, self.alpha, copy,
                           {k: nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in self.B.items()})

    def peft_config(self, base_model: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.names), lora_dropout=0.0,
                          bias="none", fan_in_fan_out=self.conv1d, base_model_name_or_path=base_model,
                          task_type="CAUSAL_LM")


@contextlib.contextmanager
def attached(model: nn.Module, adapter: LoraAdapter) -> Iterator[None]:
    """The adapter's parameters inside ``model`` through PEFT LoRA layers; on exit the layers are
    unloaded and the model's ``requires_grad`` flags and train/eval mode restored."""
    from peft import LoraModel

    flags = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    training = model.training
    device = next(model.parameters()).device
    # PEFT initialises its new layers from the global RNG; ours replace them, so leave that RNG as it was
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        lora = LoraModel(model, adapter.peft_config(), ADAPTER)
    try:
        for name in adapter.names:
            layer = model.get_submodule(name)
            if not math.isclose(float(layer.scaling[ADAPTER]), adapter.scale):
                raise RuntimeError(f"finetune: PEFT scaling {layer.scaling[ADAPTER]} ≠ α/r = {adapter.scale}")
            layer.lora_A[ADAPTER].weight = adapter.A[name]
            layer.lora_B[ADAPTER].weight = adapter.B[name]
        yield
    finally:
        lora.unload()
        for n, p in model.named_parameters(remove_duplicate=False):
            p.requires_grad_(flags.get(n, False))
        model.train(training)


# --------------------------------------------------------------------------------------- data

def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_harmful_prompts(ctx: AttackContext) -> list[str]:
    """The train split's harmful prompts of the attack's sets, extract first, without repeats."""
    seen: dict[str, None] = {}
    for part in (ctx.prompts.extract, ctx.prompts.score, ctx.prompts.probe):
        for p in part.harmful:
            seen.setdefault(p, None)
    return list(seen)


def base_model_pairs(ctx: AttackContext, n: int, max_new_tokens: int) -> tuple[list[tuple[str, str]], int]:
    """(prompt, base model's greedy reply) for the first ``n`` train harmful prompts whose reply is
    non-empty and not a refusal by ``ctx.judge``; returns the pairs and how many replies were dropped."""
    from irr_ray.generation.hf import generate_greedy
    from irr_ray.models.loading import load_model, load_tokenizer

    if ctx.base_model is None:
        raise IrrRayError("finetune: answers=base needs the study's base model (none known for this study); "
                          "set attack.finetune.answers: dataset or name the base model")
    candidates = train_harmful_prompts(ctx)
    model = load_model(ctx.base_model, device=str(ctx.device), dtype=ctx.cfg.dtype).requires_grad_(False)
    tok = load_tokenizer(ctx.base_model)
    gen = ctx.cfg.generation
    pairs: list[tuple[str, str]] = []
    dropped, start = 0, 0
    try:
        while len(pairs) < n and start < len(candidates):
            chunk = candidates[start:start + n - len(pairs)]
            start += len(chunk)
            replies = generate_greedy(model, tok, chunk, max_new_tokens=max_new_tokens,
                                      batch_size=gen.batch_size, engine=gen.engine)
            refused = ([v.predicted_refusal for v in ctx.judge.judge(chunk, replies)] if ctx.judge is not None
                       else [False] * len(chunk))
            for prompt, reply, r in zip(chunk, replies, refused, strict=True):
                if r or not reply.strip():
                    dropped += 1
                else:
                    pairs.append((prompt, reply))
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return pairs, dropped


def dataset_pairs(ctx: AttackContext, n: int) -> list[tuple[str, str]]:
    """``n`` (prompt, response) rows of ``train.parquet`` with a harmful prompt and a compliant
    response (seeded order)."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    if ctx.data_dir is None:
        raise IrrRayError("finetune: answers=dataset needs the study's data directory (train.parquet)")
    path = Path(ctx.data_dir) / "train.parquet"
    if not path.is_file():
        raise DataValidationError(f"finetune: {path} not found (answers=dataset reads its compliant responses)")
    have = set(pq.read_schema(path).names)
    label_col = next((c for c in REFUSAL_LABEL_COLUMNS if c in have), None)
    missing = [c for c in ("prompt", "prompt_harm_label", "response") if c not in have]
    if label_col is None:
        missing.append(" or ".join(REFUSAL_LABEL_COLUMNS))
    if missing:
        raise DataValidationError(f"finetune: {path} lacks column(s) {', '.join(missing)} "
                                  "(answers=dataset needs prompts with their compliant responses)")
    df = pd.read_parquet(path, columns=["prompt", "prompt_harm_label", "response", label_col])
    keep = ((df["prompt_harm_label"] == "harmful") & (df[label_col] == "compliance")
            & df["response"].map(lambda r: isinstance(r, str) and bool(r.strip())))
    rows = df[keep].drop_duplicates("prompt")
    if rows.empty:
        raise DataValidationError(f"finetune: {path} has no harmful prompt with a compliant response "
                                  f"({label_col} == 'compliance')")
    order = np.random.default_rng(ctx.seed).permutation(len(rows))[:n]
    return [(str(rows["prompt"].iloc[i]), str(rows["response"].iloc[i]).strip()) for i in order]


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 on the prompt


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], max_answer_tokens: int,
                 max_length: int | None = None) -> list[Example]:
    """Chat-formatted prompt + answer tokens (cut at ``max_answer_tokens``; the end-of-turn token
    after a complete answer), labels on the answer only. Pairs longer than ``max_length`` are left out."""
    eot = tokenizer.eos_token_id
    if eot is None:
        raise IrrRayError(f"finetune: tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no end-of-turn "
                          "(eos) token")
    texts = format_chat(tokenizer, [p for p, _ in pairs])
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for p, a in zip(prompt_ids, answer_ids, strict=True):
        answer = list(a[:max_answer_tokens]) + ([int(eot)] if len(a) <= max_answer_tokens else [])
        if max_length is not None and len(p) + len(answer) > max_length:
            continue
        out.append(Example(list(p) + answer, [-100] * len(p) + answer))
    return out


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions count from 0 in every row); padding is masked and unlabelled."""
    t = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), t), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), t), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The examples of optimizer step ``step`` (0-based): a stream of seeded epoch permutations
    (epoch e: seed·1_000_003 + e, the trainer's convention) cut into consecutive batches."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        take = perm[offset:offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


# --------------------------------------------------------------------------------------- attack

class FinetuneAttack(SuiteAttack):
    """LoRA fine-tuning toward compliance; budget = optimizer steps (module docstring)."""

    name = "finetune"
    budget_axis = "steps"
    Settings = FinetuneSettings

    def __init__(self, settings: FinetuneSettings) -> None:
        super().__init__(settings)
        self.adapter: LoraAdapter | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.examples: list[Example] = []
        self.pairs: list[tuple[str, str]] = []
        self.key: str = ""
        self.steps = 0
        self.losses: list[float] = []
        self.seconds_per_step: float | None = None
        self.model_path: str | None = None

    # ------------------------------------------------------------------ data

    def _pairs(self, ctx: AttackContext) -> list[tuple[str, str]]:
        """The training pairs, from ``<work_dir>/finetune/pairs.json`` when it was made for these settings."""
        s = self.settings
        if s.answers == "base":
            source: dict[str, Any] = {"base_model": ctx.base_model, "prompts": _digest(train_harmful_prompts(ctx)),
                                      "judge": getattr(ctx.judge, "name", None) if ctx.judge else None}
        else:
            path = Path(ctx.data_dir) / "train.parquet" if ctx.data_dir is not None else None
            source = {"train_sha256": file_sha256(path) if path and path.is_file() else None}
        key = {"answers": s.answers, "n_examples": s.n_examples, "max_answer_tokens": s.max_answer_tokens,
               "seed": ctx.seed, **source}
        cache = ctx.work_dir / self.name / "pairs.json"
        if cache.is_file():
            doc = json.loads(cache.read_text())
            if doc.get("key") == key:
                return [(p["prompt"], p["answer"]) for p in doc["pairs"]]
        dropped = 0
        if s.answers == "base":
            # one token more than is trained on: a reply longer than the cut gets no end-of-turn token
            pairs, dropped = base_model_pairs(ctx, s.n_examples, s.max_answer_tokens + 1)
        else:
            pairs = dataset_pairs(ctx, s.n_examples)
        if not pairs:
            raise IrrRayError(f"finetune: no compliant answers from the base model {ctx.base_model} "
                              f"({dropped} replies were refusals or empty); try answers: dataset")
        if len(pairs) < s.n_examples:
            why = (f"{dropped} base-model replies were refusals or empty, {len(train_harmful_prompts(ctx))} "
                   "train harmful prompts" if s.answers == "base" else "harmful prompts with a compliant response "
                   "in train.parquet")
            log.warning("finetune: %d of %d training pairs (%s)", len(pairs), s.n_examples, why)
        write_json_atomic(cache, {"key": key, "dropped_refusals": dropped,
                                  "pairs": [{"prompt": p, "answer": a} for p, a in pairs]})
        return pairs

    def _prepare(self, ctx: AttackContext) -> None:
        if self.adapter is not None:
            return
        s = self.settings
        self.pairs = self._pairs(ctx)
        max_len = getattr(ctx.model.config, "max_position_embeddings", None)
        self.examples = encode_pairs(ctx.tokenizer, self.pairs, s.max_answer_tokens, max_len)
        if not self.examples:
            raise IrrRayError(f"finetune: every training pair is longer than the model's {max_len} positions")
        self.adapter = LoraAdapter.init(ctx.model, s.rank, s.alpha, ctx.seed)
        self.optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=s.lr, weight_decay=0.0)
        self.key = _digest({"settings": s.model_dump(exclude={"budgets"}), "seed": ctx.seed,
                            "pairs": _digest(self.pairs), "targets": self.adapter.names})
        self.model_path = getattr(ctx.model, "name_or_path", None) or None

    # ------------------------------------------------------------------ saved progress

    def _state_paths(self, ctx: AttackContext, budget: int) -> tuple[Path, Path, Path]:
        d = ctx.work_dir / self.name
        return d / f"step{budget}.adapter.safetensors", d / f"step{budget}.optim.pt", d / f"step{budget}.json"

    def _save(self, ctx: AttackContext, budget: int) -> None:
        adapter_path, optim_path, meta_path = self._state_paths(ctx, budget)
        adapter_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(adapter_path) as tmp:
            save_file(self.adapter.tensors(), str(tmp))
        with atomic_path(optim_path) as tmp:
            torch.save(self.optimizer.state_dict(), tmp)
        write_json_atomic(meta_path, {"key": self.key, "steps": budget, "losses": self.losses[:budget]})

    def _saved(self, ctx: AttackContext, budget: int) -> dict[str, Any] | None:
        adapter_path, optim_path, meta_path = self._state_paths(ctx, budget)
        if not (meta_path.is_file() and adapter_path.is_file() and optim_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        return meta if meta.get("key") == self.key and meta.get("steps") == budget else None

    def _restore(self, ctx: AttackContext, budget: int) -> None:
        """Load the latest saved state at ≤ ``budget`` steps that is ahead of the one in memory."""
        d = ctx.work_dir / self.name
        saved = sorted((int(p.name[4:-5]) for p in d.glob("step*.json") if p.name[4:-5].isdigit()), reverse=True)
        for b in saved:
            if b <= self.steps or b > budget:
                continue
            meta = self._saved(ctx, b)
            if meta is None:
                continue
            adapter_path, optim_path, _ = self._state_paths(ctx, b)
            self.adapter.load(load_file(str(adapter_path)))
            self.optimizer.load_state_dict(torch.load(optim_path, map_location=ctx.device, weights_only=True))
            self.steps, self.losses = b, [float(x) for x in meta["losses"]]
            log.info("finetune: loaded the saved state at %d steps from %s", b, d)
            return

    # ------------------------------------------------------------------ training

    def _train(self, ctx: AttackContext, budget: int) -> None:
        """Optimizer steps ``self.steps`` … ``budget − 1`` on the shared model (adapter attached)."""
        s, device = self.settings, ctx.device
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
        params = self.adapter.parameters()
        start, t0 = self.steps, time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad(), attached(ctx.model, self.adapter):
            ctx.model.eval()  # no dropout: deterministic
            while self.steps < budget:
                idx = batch_indices(len(self.examples), s.batch_size, ctx.seed, self.steps)
                batch = collate([self.examples[i] for i in idx], pad, device)
                with autocast(str(device), dtype):
                    loss = ctx.model(**batch, use_cache=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.losses.append(float(loss.detach()))
                self.steps += 1
        self.seconds_per_step = (time.perf_counter() - t0) / max(budget - start, 1)
        log.info("finetune: %d → %d steps, %.3f s/step, loss %.3f", start, budget, self.seconds_per_step,
                 self.losses[-1])

    # ------------------------------------------------------------------ the interface

    def step(self, ctx: AttackContext, budget: int) -> BudgetStep:
        self._prepare(ctx)
        if budget < self.steps:
            raise ValueError(f"finetune: budgets must increase (at {self.steps} steps, asked for {budget})")
        self._restore(ctx, budget)
        if self.steps < budget:
            self._train(ctx, budget)
            self._save(ctx, budget)
        previous = max((b for b in self.budgets() if b < budget), default=0)
        segment = self.losses[previous:budget] or self.losses[-1:]
        adapter = self.adapter.snapshot()
        model = ctx.model
        return BudgetStep(
            intervention=lambda: patched_parameters(model, adapter.merged_weights(model)),
            info={"steps": budget, "loss": float(sum(segment) / len(segment)), "n_examples": len(self.examples)},
        )

    def merged_weights(self, ctx: AttackContext) -> dict[str, torch.Tensor]:
        """{``<module>.weight``: W + s·B A} of the current adapter (what the last step's intervention applies)."""
        if self.adapter is None:
            raise RuntimeError("finetune: no adapter yet (call step first)")
        return self.adapter.merged_weights(ctx.model)

    def write_artifacts(self, out: Path) -> None:
        """``finetune_adapter/`` (PEFT format: ``adapter_model.safetensors``, ``adapter_config.json``)
        and ``finetune_loss.json`` (the training loss per optimizer step)."""
        if self.adapter is None:
            log.warning("finetune: nothing trained, no artifacts written")
            return
        out = Path(out)
        adapter_dir = out / "finetune_adapter"
        adapter_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(adapter_dir / "adapter_model.safetensors") as tmp:
            save_file(self.adapter.tensors(), str(tmp), metadata={"format": "pt"})
        self.adapter.peft_config(self.model_path).save_pretrained(str(adapter_dir))
        write_json_atomic(out / "finetune_loss.json", {
            "steps": self.steps, "n_examples": len(self.examples), "answers": self.settings.answers,
            "rank": self.adapter.rank, "alpha": self.adapter.alpha, "targets": self.adapter.names,
            "loss": [{"step": i + 1, "loss": v} for i, v in enumerate(self.losses)],
        })
