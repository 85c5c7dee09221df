"""``irr-ray reproduce REPRODUCE.yaml``: the reproduction study (:mod:`irr_ray.reproduce`) —
one study per organism seed, each a fixed grid of conditions × training seeds, resumable."""

from __future__ import annotations

import argparse

from irr_ray.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="reproduce YAML (e.g. experiments/reproduce.yaml)")
    parser.add_argument("--root", default=None, help="where the sub-studies land (default: the YAML's root)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set train_seeds=[0] or --set study.attack.k_max=2 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an existing root: finished sub-studies are skipped, interrupted ones resume")
    parser.add_argument("--organism-seeds", default=None, metavar="S,S,...",
                        help="run these organism seeds (replaces the YAML's organism_seeds), e.g. 0,1")


def parse_seeds(value: str | None) -> list[int] | None:
    """``"0,1"`` → ``[0, 1]``; a bad list is one line."""
    if value is None:
        return None
    try:
        seeds = [int(s) for s in value.split(",") if s.strip() != ""]
    except ValueError:
        raise ConfigError(f"--organism-seeds {value!r}: expected comma-separated integers, e.g. 0,1") from None
    if not seeds:
        raise ConfigError("--organism-seeds: list at least one seed, e.g. 0,1")
    return seeds


def run(args: argparse.Namespace) -> int:
    from irr_ray.reproduce.runner import run_reproduce

    result = run_reproduce(args.config, root=args.root, overrides=args.overrides, resume=args.resume,
                           organism_seeds=parse_seeds(args.organism_seeds))
    ran = [r for r in result.runs if not r.skipped]
    total = sum(r.seconds for r in ran)
    print(f"reproduction study done in {total:.0f} s ({len(ran)} sub-studies run, "
          f"{len(result.runs) - len(ran)} skipped): {result.root}")
    for r in result.runs:
        print(f"browse organism seed {r.seed}:  irr-ray ui --study {r.study_dir}")
    return 0
