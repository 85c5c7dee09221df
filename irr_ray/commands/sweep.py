"""``irr-ray sweep``: Ray Tune sweep (Optuna x ASHA) of fine-tunes, tracked in MLflow.

Reads the study file (the whole of it is validated as `StudyConfig`; the sweep uses `name`,
`study_dir`, the source model, `ray`, `tracking`, `train` and `sweep`); `--set key=value` overrides
any of them (e.g. `--set sweep.num_samples=16`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study YAML (experiments/<study>.yaml)")
    parser.add_argument("--study-dir", help="study directory (default: the file's study_dir)")
    parser.add_argument("--data-dir", help="study dataset directory (default: <study>/data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set sweep.num_samples=16 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")


def run(args: argparse.Namespace) -> int:
    import sys

    from irr_ray.preflight import check_input_dir, check_study_dir, check_study_models
    from irr_ray.study_config import load_study, resolve_study
    from irr_ray.train.sweep import SweepInterrupted, run_sweep

    study, root = resolve_study(load_study(args.config, args.overrides), args.study_dir)
    check_study_dir(root)
    if args.data_dir:
        check_input_dir(args.data_dir, "--data-dir", needs=("train.parquet",))
    check_study_models(study, ["sweep"])
    try:
        outcome = run_sweep(study, study_dir=root, resume=args.resume, data_dir=args.data_dir,
                            verbose=not args.quiet)
    except SweepInterrupted as exc:
        print(f"irr-ray sweep: {exc}", file=sys.stderr)
        return 130
    n_early = sum(t["stopped_early"] for t in outcome.trials)
    n_failed = sum(t["status"] == "FAILED" for t in outcome.trials)
    print(f"sweep: {len(outcome.trials)} trials ({n_early} stopped early by ASHA, {n_failed} failed) in "
          f"{outcome.wall_seconds:.0f}s; checkpoints in {outcome.experiment_path.parent.parent / 'checkpoints'}")
    return 0
