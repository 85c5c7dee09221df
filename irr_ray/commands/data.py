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


def check_data_inputs(cfg, out, what_out: str = "--out") -> None:
    """Output, source file and source model checked before Ray starts (:mod:`irr_ray.preflight`)."""
    from pathlib import Path

    from irr_ray.data.ingest import FORMATS
    from irr_ray.errors import ConfigError
    from irr_ray.preflight import check_output_dir, looks_like_hub_id

    if not cfg.source:
        raise ConfigError("data.source is required (--source, or `source:` in the config)")
    if not cfg.source_model:
        raise ConfigError("data.source_model is required (--source-model, or `source_model:` in the config)")
    check_output_dir(out, "data", what_out)
    src = Path(cfg.source).expanduser()
    if not src.exists() and (not looks_like_hub_id(cfg.source) or src.suffix.lower() in FORMATS):
        raise ConfigError(f"data source {cfg.source} (--source / data.source) does not exist (a local path, "
                          "so no hub lookup)")
    # the source model is checked by the stage itself right after the source file validates
    # (irr_ray.data.stage.run_data_stage: in memory, before anything is written or Ray starts)


def run(args: argparse.Namespace) -> int:
    from irr_ray.data.config import DataConfig
    from irr_ray.data.stage import run_data_stage
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    flags = {"source": args.source, "source_model": args.source_model, "filter_train": args.filter_train,
             "max_samples": args.max_samples, "seed": args.seed, "train_frac": args.train_frac}
    cfg = load_section(args.config, "data", DataConfig, flags, args.overrides)
    check_data_inputs(cfg, args.out)
    out = run_data_stage(cfg, args.out)
    print(f"data: wrote {out / 'train.parquet'}, {out / 'holdout.parquet'}, {out / 'manifest.json'}")
    return 0
