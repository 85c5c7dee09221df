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
    parser.add_argument("--source-model", help="the model --model was trained from: scores reply coherence "
                                               "(default: --model itself)")
    parser.add_argument("--config", help="YAML with AttackConfig keys (eval_n, judge.*, generation.*, probe_*)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set eval_n=50 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.attack.config import AttackConfig
    from irr_ray.attack.run import evaluate_model
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_section(args.config, "attack", AttackConfig, overrides=args.overrides)
    from irr_ray.commands.attack import check_model_inputs

    check_model_inputs(args, cfg, "eval")
    source = None
    if args.source_model:
        from irr_ray.attack.run import SourceBaseline, evaluate_k0_doc

        source = SourceBaseline.from_k0(args.source_model, evaluate_k0_doc(args.source_model, args.data_dir, cfg,
                                                                          args.judge_model))
    doc = evaluate_model(args.model, args.data_dir, cfg, args.out, judge_model=args.judge_model, source=source)
    row = doc["row"]
    lo, hi = row["refusal_harmful_ci"]
    lo2, hi2 = row["refusal_harmless_ci"]
    print(f"eval {args.model}: harmful refusal {row['refusal_harmful']:.3f} [{lo:.3f}, {hi:.3f}] "
          f"(n={doc['harmful_n']}, degenerate {row['degenerate_harmful']:.2f}), harmless refusal "
          f"{row['refusal_harmless']:.3f} [{lo2:.3f}, {hi2:.3f}] (n={doc['harmless_n']}, degenerate "
          f"{row['degenerate_harmless']:.2f}); probes at layer {doc['probe_layer']}: linear "
          f"{doc['linear_probe_acc']:.3f}, mlp {doc['mlp_probe_acc']:.3f} -> {args.out}/k0.json")
    return 0
