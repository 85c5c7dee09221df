"""``irr-ray data``: WildGuardMix (or a local file) -> generate -> judge -> balanced train/holdout split.

Precedence: defaults < ``--config`` YAML < the flags below < ``--set key=value`` overrides.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="allenai/wildguardmix (needs HF_TOKEN) or a local parquet/jsonl/csv "
                                         "file or directory with its columns")
    parser.add_argument("--source-model", help="model that answers the prompts (HF directory or hub id)")
    parser.add_argument("--out", required=True, help="output directory (train/holdout.parquet, manifest.json)")
    parser.add_argument("--filter-train", action="store_true", default=None,
                        help="drop train rows where the source model disagrees with the gold label")
    parser.add_argument("--max-samples", type=int, help="cap on prompts (stratified, seeded)")
    parser.add_argument("--seed", type=int, help="seed for balancing, sampling and the split (default 42)")
    parser.add_argument("--train-frac", type=float, help="stratified train fraction (default 0.8)")
    parser.add_argument("--config", help="YAML with DataConfig keys (generation.*, judge.*, ray.*)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set generation.batch_size=64 (repeatable)")


def build_data_config(args: argparse.Namespace):
    from irr_ray.config import apply_overrides, build_config, read_yaml
    from irr_ray.data.config import DataConfig

    data = read_yaml(args.config) if args.config else {}
    flags = {"source": args.source, "source_model": args.source_model, "filter_train": args.filter_train,
             "max_samples": args.max_samples, "seed": args.seed, "train_frac": args.train_frac}
    data.update({k: v for k, v in flags.items() if v is not None})
    apply_overrides(data, args.overrides)
    return build_config(DataConfig, data, args.config or "<command line>")


def run(args: argparse.Namespace) -> int:
    from irr_ray.data.stage import run_data_stage

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = build_data_config(args)
    out = run_data_stage(cfg, args.out)
    print(f"data: wrote {out / 'train.parquet'}, {out / 'holdout.parquet'}, {out / 'manifest.json'}")
    return 0
