"""The model the sentiment conditions start from: a small GPT-2 built here, or a hub GPT-2.

``model.source: local`` writes ``DIR`` as a complete Hugging Face model directory:

1. a WordLevel tokenizer over the train split's words (the local reviews are lower-case words and
   punctuation separated by spaces), ``<|endoftext|>`` as bos/eos/pad, saved as a fast tokenizer;
2. a ``GPT2LMHeadModel`` (``GPT2Config``: ``n_layer`` blocks of width ``n_embd``) trained from
   scratch by language modelling on the train reviews — the stand-in for pre-trained GPT-2 small,
   which learnt sentiment the same way: predicting the next word of a review is easier when you
   know whether the review is going well.

Deterministic for a config, data and thread count (seeded init and order) and cached: the
directory's ``build.json`` records a key over the model config and the data files' hashes, and a
matching build is returned at once. Any other ``source`` (``gpt2``, a local checkpoint) is used as is.

Reviews are encoded as raw text without special tokens, right-padded (GPT-2's learned positions
must start at the first real token) — :func:`encode_texts` is the one place that does it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from irr_ray.config import config_dict, stable_hash
from irr_ray.errors import IrrRayError
from irr_ray.sentiment.config import SentimentModelConfig
from irr_ray.utils.files import atomic_dir, build_once, tree_sha256, write_json_atomic

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
UNK = "<unk>"
FORMAT_VERSION = 1


# --- tokenisation -----------------------------------------------------------------------------------
def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerBase:
    """WordLevel fast tokenizer over the whitespace-separated words of ``texts`` (sorted vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in t.split()})
    vocab = {tok: i for i, tok in enumerate([EOS, UNK, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=UNK
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding and a pad token (GPT-2 has none: reuse eos)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Raw text → right-padded ``input_ids``/``attention_mask`` ``[N, T]`` (no special tokens, truncated)."""
    if tokenizer.padding_side != "right":
        prepare_tokenizer(tokenizer)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    add_special_tokens=False, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token labels for an LM loss over real tokens: padding gets ``-100``."""
    return input_ids.masked_fill(attention_mask == 0, -100)


# --- the local model --------------------------------------------------------------------------------
def _gpt2_config(cfg: SentimentModelConfig, tokenizer: PreTrainedTokenizerBase):
    from transformers import GPT2Config

    eos = tokenizer.convert_tokens_to_ids(EOS)
    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        activation_function="gelu",  # exact GELU: one fused op, unlike GPT-2's tanh approximation
    )


def _pretrain(model, batches: list[dict[str, torch.Tensor]], cfg: SentimentModelConfig) -> list[float]:
    """AdamW with linear warm-up and cosine decay; returns the mean LM loss per epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(batches)
    warmup = max(1, int(cfg.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    for _ in range(cfg.epochs):
        epoch_loss = 0.0
        for i in torch.randperm(len(batches), generator=gen).tolist():
            b = batches[i]
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            epoch_loss += float(out.loss.detach())
        losses.append(epoch_loss / len(batches))
        log.info("sentiment model: epoch %d/%d  lm loss %.4f", len(losses), cfg.epochs, losses[-1])
    return losses


def _batches(tokenizer, texts: list[str], cfg: SentimentModelConfig, seed: int) -> list[dict[str, torch.Tensor]]:
    """Fixed batches of ``batch_size`` texts (shuffled once, padded per batch)."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for start in range(0, len(order), cfg.batch_size):
        enc = encode_texts(tokenizer, [texts[i] for i in order[start:start + cfg.batch_size]], cfg.n_positions)
        out.append({**enc, "labels": lm_labels(enc["input_ids"], enc["attention_mask"])})
    return out


def _build_key(cfg: SentimentModelConfig, data_dir: Path) -> str:
    return stable_hash({"model": config_dict(cfg), "train": tree_sha256(data_dir / "train.parquet"),
                        "format": FORMAT_VERSION})


def build_local_model(cfg: SentimentModelConfig, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Tokenizer + LM-trained GPT-2 into ``out_dir`` (atomically); returns ``build.json``'s content.

    Cached: a directory whose ``build.json`` holds the same key is returned without training.
    """


    data_dir, out = Path(data_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    key = _build_key(cfg, data_dir)
    info, found = build_once(out, lambda: _cached_model(out, key), lambda: _train_and_write(cfg, data_dir, out, key))
    if found:
        log.info("sentiment model: cached at %s (key %s)", out, key)
        return info
    log.info("sentiment model: wrote %s (%d params, %.1fs)", out, info["parameters"], info["build_seconds"])
    return info


def _train_and_write(cfg: SentimentModelConfig, data_dir: Path, out: Path, key: str) -> dict[str, Any]:
    """Pretrain the local model on the train split's texts and write it with ``build.json`` (atomically)."""
    from transformers import GPT2LMHeadModel

    from irr_ray.sentiment.data import read_split

    texts = read_split(data_dir, "train")["text"].tolist()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = prepare_tokenizer(build_tokenizer(texts))
    model = GPT2LMHeadModel(_gpt2_config(cfg, tokenizer))
    losses = _pretrain(model, _batches(tokenizer, texts, cfg, cfg.seed), cfg)
    seconds = time.perf_counter() - t0
    info = {
        "key": key, "config": config_dict(cfg), "data_dir": str(data_dir), "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()), "epoch_lm_loss": losses,
        "build_seconds": round(seconds, 2), "threads": torch.get_num_threads(),
    }
    with atomic_dir(out) as tmp:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "build.json", info)
    return info


def _cached_model(out: Path, key: str) -> dict[str, Any] | None:
    """``build.json``'s content if ``out`` holds a finished build with ``key``, else None."""
    record = out / "build.json"
    if not (record.is_file() and (out / "model.safetensors").is_file()):
        return None
    info = json.loads(record.read_text())
    return info if info.get("key") == key else None


def resolve_source_model(cfg: SentimentModelConfig, data_dir: str | Path, local_dir: str | Path) -> str:
    """The path or hub id every condition starts from: the built local model, or ``cfg.source``."""
    if cfg.source == "local":
        build_local_model(cfg, data_dir, local_dir)
        return str(Path(local_dir).expanduser().resolve())
    return cfg.source


def load_for_eval(path: str, device: str = "cpu"):
    """(model in eval mode, right-padded tokenizer) for a model directory or hub id."""
    from irr_ray.models.loading import load_model, load_tokenizer

    try:
        model = load_model(path, device=device, dtype="float32")
        tokenizer = prepare_tokenizer(load_tokenizer(path))
    except OSError as exc:
        raise IrrRayError(f"could not load model {path!r}: {exc}") from None
    return model, tokenizer
