"""``irr-ray run STUDY.yaml``: the whole study (organism → data → sweep → attack → report)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="study YAML (e.g. experiments/organism.yaml)")
    parser.add_argument("--study-dir", default=None, help="study directory (default: the YAML's study_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. --set sweep.num_samples=4 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an existing study: finished stages/trials/models are reused")


def run(args: argparse.Namespace) -> int:
    from irr_ray.driver import run_study

    result = run_study(args.config, study_dir=args.study_dir, overrides=args.overrides, resume=args.resume)
    if result.report_text:
        print()
        print(result.report_text)
    print()
    timings = ", ".join(f"{t.name} {t.seconds:.0f}s" for t in result.timings)
    print(f"study done in {result.wall_s:.0f} s ({timings}): {result.study_dir}")
    print(f"browse the study:  irr-ray ui --study {result.study_dir}   (then http://127.0.0.1:5000)")
    return 0
