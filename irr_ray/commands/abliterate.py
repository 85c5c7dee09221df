"""``irr-ray abliterate``: write an HF checkpoint with refusal directions orthogonalised out of its
weights (Arditi et al. 2024 §4, "abliteration"; the math is :mod:`irr_ray.core.orthogonalize`).

``--directions`` is a safetensors file with a ``directions`` tensor [K, hidden] (e.g. an attack's
``directions.safetensors``); its first ``--k`` rows (default: all) are orthonormalised in order and
removed from every residual-writing weight. ``--variant exact`` (default) gives a model equal to the
three-site hook ablation; ``norm_preserving`` keeps each weight row's norm (grimjim / heretic) and
applies the directions as given — the command has no prompts to measure a harmless mean, so
harmless-projected directions come from the ``orthogonalize`` attack's
``orthogonalize_directions.safetensors``. Post-norm families (gemma2, gemma3_text, olmo2, olmo3,
glm4) need ``--approximate``. A model with tied embeddings is saved untied
(``tie_word_embeddings: false``, ``lm_head`` = the original embeddings).

Everything is checked before the model loads; the checkpoint (safetensors, the source's dtype, its
tokenizer files, ``abliteration.json`` with the provenance) appears at ``--out`` only when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model to edit (HF directory or hub id)")
    parser.add_argument("--directions", required=True,
                        help="safetensors file with a 'directions' tensor [K, hidden] (e.g. directions.safetensors)")
    parser.add_argument("--out", required=True, help="new checkpoint directory (absent or empty)")
    parser.add_argument("--variant", choices=["exact", "norm_preserving"], default="exact",
                        help="exact: W <- (I - QᵀQ) W (default; equals the hook ablation); norm_preserving: "
                             "keep each weight row's norm (grimjim / heretic)")
    parser.add_argument("--k", type=int, help="use the first K directions of the file (default: all)")
    parser.add_argument("--approximate", action="store_true",
                        help="allow post-norm families (gemma2, olmo2, …): edit the projections before their "
                             "post-norms — an approximation of the ablation")


def _check_inputs(args: argparse.Namespace):
    """Every input checked before any model loads → (text config, orthonormal directions [k, D], k)."""
    from transformers import AutoConfig

    from irr_ray.core.directions import load_directions, orthonormalize
    from irr_ray.core.orthogonalize import post_norm_error
    from irr_ray.errors import IrrRayError
    from irr_ray.models.families import LAYOUTS
    from irr_ray.preflight import check_model, check_output_dir

    check_output_dir(args.out, "abliterate")
    if args.k is not None and args.k <= 0:
        raise IrrRayError(f"--k {args.k}: the number of directions to remove must be ≥ 1")
    check_model(args.model, "--model", chat=False)
    try:
        config = AutoConfig.from_pretrained(args.model).get_text_config()
    except Exception as exc:  # noqa: BLE001 - check_model read the same config; one line if it still fails
        raise IrrRayError(f"model {args.model}: config cannot be read ({type(exc).__name__})") from None
    model_type = str(config.model_type)
    spec = LAYOUTS.get(model_type)
    if spec is not None and (spec.attn_write != spec.attn or spec.mlp_write != spec.mlp) and not args.approximate:
        raise post_norm_error(model_type, spec.attn_write, spec.mlp_write)
    path = Path(args.directions).expanduser()
    if path.is_dir():
        raise IrrRayError(f"--directions {path} is a directory, expected a safetensors file")
    directions, _ = load_directions(path)
    width = int(config.hidden_size)
    if directions.shape[1] != width:
        raise IrrRayError(f"{path}: 'directions' are {directions.shape[1]} wide but {args.model} has hidden size "
                          f"{width} (directions of another model?)")
    rows = directions.shape[0]
    k = rows if args.k is None else args.k
    if rows == 0 or k > rows:
        raise IrrRayError(f"{path}: 'directions' holds {rows} direction(s), --k asks for {k}")
    if not bool(directions[:k].isfinite().all()):
        raise IrrRayError(f"{path}: 'directions' has non-finite values in its first {k} row(s)")
    try:
        q = orthonormalize(directions[:k].double())
    except ValueError as exc:
        raise IrrRayError(f"{path}: {exc}") from None
    return config, q, k


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config, q, k = _check_inputs(args)

    import torch
    from torch import nn

    from irr_ray.core.orthogonalize import orthogonalize_weights
    from irr_ray.generation.orthogonalized import copy_tokenizer
    from irr_ray.models.loading import load_model
    from irr_ray.utils.files import atomic_dir, file_sha256

    model = load_model(args.model, device="cpu", dtype="float32").requires_grad_(False)
    saved_dtype = getattr(config, "dtype", None)  # as stored: the checkpoint is written back in it
    edit = orthogonalize_weights(model, q, variant=args.variant, approximate=args.approximate)
    modules = dict(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name, value in edit.untied.items():  # untie first: the shared tensor is edited below
            owner, attr = modules[name.rpartition(".")[0]], name.rpartition(".")[2]
            setattr(owner, attr, nn.Parameter(value.clone(), requires_grad=False))
        params = dict(model.named_parameters(remove_duplicate=False))
        for name, value in edit.replacements.items():
            params[name].copy_(value)
    for key, value in edit.config_updates().items():
        setattr(model.config, key, value)
        setattr(model.config.get_text_config(), key, value)
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype, None)
    if isinstance(saved_dtype, torch.dtype) and saved_dtype.is_floating_point and saved_dtype != torch.float32:
        model = model.to(saved_dtype)
    provenance = {"source_model": args.model, "directions": str(Path(args.directions).expanduser().resolve()),
                  "directions_sha256": file_sha256(Path(args.directions).expanduser()), "k": k,
                  "variant": args.variant, "approximate": edit.approximate,
                  "untied_embeddings": bool(edit.untied), "edited_parameters": sorted(edit.replacements)}
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        copy_tokenizer(args.model, tmp)
        (tmp / "abliteration.json").write_text(json.dumps(provenance, indent=2) + "\n")
    note = " (approximation: post-norm family)" if edit.approximate else ""
    untied = "; embeddings untied" if edit.untied else ""
    print(f"removed {k} direction(s) ({args.variant}{note}) from {len(edit.replacements)} weight tensors of "
          f"{args.model}{untied} -> {args.out}")
    return 0
