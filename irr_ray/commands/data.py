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
    parser.add_argument("--config", help="YAML with DataConfig keys (generation.*, judge.*, ray.*), or a study "
                                         "file (its data: section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set generation.batch_size=64 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.data.config import DataConfig
    from irr_ray.data.stage import run_data_stage
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    flags = {"source": args.source, "source_model": args.source_model, "filter_train": args.filter_train,
             "max_samples": args.max_samples, "seed": args.seed, "train_frac": args.train_frac}
    cfg = load_section(args.config, "data", DataConfig, flags, args.overrides)
    out = run_data_stage(cfg, args.out)
    print(f"data: wrote {out / 'train.parquet'}, {out / 'holdout.parquet'}, {out / 'manifest.json'}")
    return 0
