"""``irr-ray report --study DIR``: print the study's table, write report.md + pareto.png, log to MLflow.

A reproduction root (``irr-ray reproduce``: ``DIR/grid.json``) gets its claims table instead,
(re)written from the sub-studies as they are now (``claims.md``, ``claims.json``, ``report.md``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="DIR", help="study directory (holds attacks/*/attack.json)")
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI (default: the study's config, else sqlite <study>/mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="write report.md and pareto.png only")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from irr_ray.report import build_report

    if (Path(args.study) / "grid.json").is_file():
        from irr_ray.report.claims import write_claims

        print(write_claims(args.study), end="")
        return 0

    report = build_report(args.study, tracking_uri=args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    print(report.render_text())
    return 0
