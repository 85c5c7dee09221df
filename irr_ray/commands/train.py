"""``irr-ray train``: fine-tune one condition (LM + matching + KD) into an HF checkpoint directory.

``--config`` is a YAML of train settings, or a study file (its ``train:`` section and
``source_model`` are used). Precedence: defaults < YAML < ``--condition`` preset < ``--model`` <
``--set key=value``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="train settings YAML, or a study YAML with a `train:` section")
    parser.add_argument("--condition", help="named preset: baseline, l1, cov, l1_kd, cov_kd, kd_only")
    parser.add_argument("--model", help="source model directory (overrides the config)")
    parser.add_argument("--data-dir", required=True, help="study dataset directory (train.parquet)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override of a train setting, e.g. --set lr=1e-4 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


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
    train_to_dir(cfg, args.data_dir, args.out, condition=args.condition)
    return 0
