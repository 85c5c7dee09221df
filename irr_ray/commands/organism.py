"""``irr-ray organism build --out DIR [--seed N]``: the tiny chat model and its WildGuardMix-shaped data.

Precedence: defaults < ``--config`` YAML (OrganismConfig keys) < ``--set key=value`` overrides.
A second call with the same seed and config returns the cached build at once.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build (or reuse) the organism in DIR")
    build.add_argument("--out", required=True, help="output directory (data/, tokenizer/, base/, instruct/, summary.json)")
    build.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    build.add_argument("--config", help="YAML with OrganismConfig keys (pretrain.*, safety.*, selection.*, ...)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. --set safety.steps=600 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.organism import OrganismConfig, build_organism
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from irr_ray.errors import ConfigError
    from irr_ray.preflight import check_output_dir

    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed}: a seed is a non-negative integer")
    cfg = load_section(args.config, None, OrganismConfig, overrides=args.overrides)
    check_output_dir(args.out, "organism")
    paths = build_organism(args.out, seed=args.seed, config=cfg)
    summary = paths.load_summary()
    b = summary["behaviour"]
    state = "cached" if paths.from_cache else f"built in {summary['build_seconds']:.0f} s"
    print(f"organism: {paths.root} ({state}, seed {summary['seed']}, key {paths.build_hash})")
    for name in ("instruct", "base", "ablated", "random_direction_ablated"):
        r = b[name]["heldout"]
        print(f"  {name:<25} held-out refusal: harmful {r['harmful']:.3f}  harmless {r['harmless']:.3f}")
    d = b["direction"]
    print(f"  direction: layer {d['layer']}, position {d['position']}, kl {d['kl']:.3f}, "
          f"induce {d['induce_score']:.2f}")
    failed = [k for k, ok in summary["checks"].items() if not ok]
    print("  behaviour checks: " + ("all pass" if not failed else "FAILED " + ", ".join(failed)))
    return 0
