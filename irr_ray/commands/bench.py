"""``irr-ray bench TARGET``: benchmarks that print side-by-side ratios measured in one run."""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "core": "irr_ray.bench.core",
    "data": "irr_ray.bench.data",
    "train": "irr_ray.bench.train",
    "attack": "irr_ray.bench.attack",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (smoke test)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--organism-dir", default=None, help="organism directory (for stage benchmarks)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(TARGETS[args.target]).run(args) or 0)
