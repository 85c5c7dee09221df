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


def build_train_config(args: argparse.Namespace):
    from irr_ray.config import apply_overrides, build_config, read_yaml
    from irr_ray.train.config import TrainConfig
    from irr_ray.train.presets import all_presets, apply_preset

    data = read_yaml(args.config) if args.config else {}
    if "train" in data and isinstance(data["train"], dict):
        source_model = data.get("source_model")
        data = dict(data["train"])
        if source_model and not data.get("model"):
            data["model"] = source_model
    if args.condition:
        data = apply_preset(data, args.condition, all_presets())
    if args.model:
        data["model"] = args.model
    apply_overrides(data, args.overrides)
    return build_config(TrainConfig, data, args.config or "<command line>")


def run(args: argparse.Namespace) -> int:
    import torch

    from irr_ray.train.single import train_to_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_train_config(args)
    train_to_dir(cfg, args.data_dir, args.out, condition=args.condition)
    return 0
