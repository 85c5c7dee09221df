"""``irr-ray eval``: K=0 evaluation of one model — refusal rates (95% Wilson intervals) on the holdout
and linear / MLP probe accuracy at layer int(0.65·L) → ``OUT/k0.json``.

Precedence: defaults < ``--config`` YAML (AttackConfig keys or a study's ``attack:`` section) <
``--set key=value``.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model to evaluate (HF directory or hub id)")
    parser.add_argument("--data-dir", required=True, help="study dataset (train.parquet, holdout.parquet)")
    parser.add_argument("--out", required=True, help="output directory (k0.json)")
    parser.add_argument("--judge-model", help="model whose declared refusal phrases the substring judge adds "
                                              "(default: --model)")
    parser.add_argument("--config", help="YAML with AttackConfig keys (eval_n, judge.*, generation.*, probe_*)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set eval_n=50 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.attack.config import load_attack_config
    from irr_ray.attack.run import evaluate_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_attack_config(args.config, overrides=args.overrides)
    doc = evaluate_model(args.model, args.data_dir, cfg, args.out, judge_model=args.judge_model)
    lo, hi = doc["refusal_harmful_ci"]
    lo2, hi2 = doc["refusal_harmless_ci"]
    print(f"eval {args.model}: harmful refusal {doc['refusal_harmful']:.3f} [{lo:.3f}, {hi:.3f}] "
          f"(n={doc['harmful_n']}), harmless refusal {doc['refusal_harmless']:.3f} [{lo2:.3f}, {hi2:.3f}] "
          f"(n={doc['harmless_n']}); probes at layer {doc['probe_layer']}: linear {doc['linear_probe_acc']:.3f}, "
          f"mlp {doc['mlp_probe_acc']:.3f} -> {args.out}/k0.json")
    return 0
