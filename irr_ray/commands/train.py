"""``irr-ray train``: fine-tune one condition (LM + matching + KD) into an HF checkpoint directory.

``--config`` is a YAML of train settings, or a study file (its ``train:`` section and
``source_model`` are used). Precedence: defaults < YAML < ``--condition`` preset < ``--model`` <
``--set key=value``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="train settings YAML, or a study YAML with a `train:` section")
    parser.add_argument("--condition", help="named preset: baseline, l1, cov, l1_kd, cov_kd, kd_only, kd_reply, refat, "
                                                    "refat_both, random_ablation, cov_kd_refat (irr_ray/train/presets.py)")
    parser.add_argument("--model", help="source model directory (overrides the config)")
    parser.add_argument("--data-dir", required=True, help="study dataset directory (train.parquet)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override of a train setting, e.g. --set lr=1e-4 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def preflight(cfg, args: argparse.Namespace) -> None:
    """Output, dataset and model checked before the model loads (:mod:`irr_ray.preflight`)."""
    from irr_ray.errors import ConfigError
    from irr_ray.preflight import check_input_dir, check_model, check_output_dir

    check_output_dir(args.out, "train")
    check_input_dir(args.data_dir, "--data-dir", needs=("train.parquet",))
    if not cfg.model:
        raise ConfigError("no model to train: pass --model or set `model` (or a study's `source_model`)")
    check_model(cfg.model, "--model" if args.model else "train.model", refusal_tokens=cfg.eval.refusal_tokens)


def run(args: argparse.Namespace) -> int:
    import torch

    from irr_ray.study_config import load_section
    from irr_ray.train.config import TrainConfig
    from irr_ray.train.presets import preset
    from irr_ray.train.single import train_to_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_section(args.config, "train", TrainConfig, {"model": args.model}, args.overrides,
                       layers=[preset(args.condition)] if args.condition else ())
    preflight(cfg, args)
    train_to_dir(cfg, args.data_dir, args.out, condition=args.condition)
    return 0
