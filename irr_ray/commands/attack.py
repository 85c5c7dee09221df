"""``irr-ray attack``: one attack of the suite on one model. The default, ``--attack dim``, is the
method's iterated directional ablation, K = 1 … k_max, with a behavioural evaluation after every K →
``OUT/attack.json`` (K-curve, attack_rank, verdict) and ``OUT/directions.safetensors``. The other
attacks (``orthogonalize``, ``rdo``, ``optuna_abliteration``, ``finetune``) write ``OUT/attack.json``
with one row per budget of their own axis, and their artifacts (:mod:`irr_ray.attack.suite.runner`).

Resumable: an interrupted attack continues from its last finished K; a finished one is not redone
(``--force`` redoes it). Precedence: defaults < ``--config`` < flags < ``--set key=value``.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model to attack (HF directory or hub id)")
    parser.add_argument("--attack", default="dim", metavar="NAME",
                        help="dim (default), orthogonalize, rdo, optuna_abliteration or finetune")
    parser.add_argument("--base-model", help="finetune: the model whose answers train the attack (answers=base)")
    parser.add_argument("--dim-dir", help="a finished dim attack of --model (its K=0 evaluation and directions "
                                          "are reused, e.g. by orthogonalize)")
    parser.add_argument("--data-dir", required=True, help="study dataset (train.parquet, holdout.parquet)")
    parser.add_argument("--out", required=True, help="output directory (attack.json, directions.safetensors, k0.json)")
    parser.add_argument("--k-max", type=int, help="attack budget (default 16)")
    parser.add_argument("--implementation", choices=["fast", "reference"], help="candidate scoring (default fast)")
    parser.add_argument("--judge-model", help="model whose declared refusal phrases the substring judge adds "
                                              "(default: --model)")
    parser.add_argument("--source-model", help="the model --model was trained from: the verdict's baseline and "
                                               "the reference that scores reply coherence (default: --model)")
    parser.add_argument("--force", action="store_true", help="redo a finished attack")
    parser.add_argument("--config", help="YAML with AttackConfig keys, or a study file (its attack: section)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set kl_threshold=0.2 (repeatable)")


def check_model_inputs(args: argparse.Namespace, cfg, command: str) -> None:
    """``attack`` / ``eval``: output, dataset and every model checked before any model loads."""
    from irr_ray.preflight import check_input_dir, check_model, check_models, check_output_dir

    check_output_dir(args.out, command)
    check_input_dir(args.data_dir, "--data-dir", needs=("train.parquet", "holdout.parquet"))
    check_model(args.model, "--model", refusal_tokens=cfg.refusal_tokens)
    check_models([(args.source_model, "--source-model")], refusal_tokens=cfg.refusal_tokens)
    if args.judge_model:
        check_model(args.judge_model, "--judge-model", tokenizer=False)


def run(args: argparse.Namespace) -> int:
    from irr_ray.attack.config import AttackConfig
    from irr_ray.attack.run import attack_model
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from irr_ray.attack.suite import ATTACK_NAMES
    from irr_ray.errors import ConfigError

    if args.attack not in ATTACK_NAMES:
        raise ConfigError(f"--attack {args.attack!r}: unknown attack; choose from {', '.join(ATTACK_NAMES)}")
    cfg = load_section(args.config, "attack", AttackConfig,
                       {"k_max": args.k_max, "implementation": args.implementation}, args.overrides)
    check_model_inputs(args, cfg, "attack")
    if args.attack == "dim":
        doc = attack_model(args.model, args.data_dir, cfg, args.out, judge_model=args.judge_model,
                           force=args.force, source_model=args.source_model)
    else:
        doc = _suite_attack(args, cfg)
        _print_suite(doc, args.out)
        return 0
    print("  K  harmful refused/complied/degenerate  harmless refused/complied/degenerate  layer  pos")
    for row in doc.curve:
        where = f"{row.layer:>6} {row.position:>4}" if row.layer is not None else ""
        print(f"{row.K:>3}  {row.refusal_harmful:>15.2f} {row.complied_harmful:>8.2f} {row.degenerate_harmful:>10.2f}"
              f"  {row.refusal_harmless:>16.2f} {row.complied_harmless:>8.2f} {row.degenerate_harmless:>10.2f} {where}")
    v = doc.verdict
    robust = "-" if v.robust_k is None else v.robust_k
    print(f"verdict: {v.verdict} ({v.reason}); robust_k = {robust}; attack_rank = {doc.rank_label} "
          f"(harmful refusal < {cfg.threshold}); stopped: {doc.stop_reason} -> {args.out}/attack.json")
    return 0


def _suite_attack(args: argparse.Namespace, cfg):
    from pathlib import Path

    from irr_ray.attack.run import progress_dir, source_baseline
    from irr_ray.attack.suite.runner import run_suite_attack
    from irr_ray.preflight import check_model

    if args.base_model:
        check_model(args.base_model, "--base-model")
    out = Path(args.out).resolve()
    source = None
    if args.source_model and Path(args.source_model).resolve() != Path(args.model).resolve():
        source = source_baseline(args.source_model, args.data_dir, cfg, progress_dir(out) / "source_k0.json",
                                 args.judge_model or args.source_model)
    return run_suite_attack(args.attack, args.model, args.data_dir, cfg, out,
                            judge_model=args.judge_model or args.source_model, source=source,
                            base_model=args.base_model, dim_dir=args.dim_dir, force=args.force)


def _print_suite(doc, out: str) -> None:
    print(f"  {doc.budget_axis:>9}  harmful refused/complied/degenerate  harmless refused/complied/degenerate")
    for row in doc.curve:
        print(f"  {row.K:>9}  {row.refusal_harmful:>15.2f} {row.complied_harmful:>8.2f} {row.degenerate_harmful:>10.2f}"
              f"  {row.refusal_harmless:>16.2f} {row.complied_harmless:>8.2f} {row.degenerate_harmless:>10.2f}")
    v = doc.verdict
    print(f"{doc.attack}: verdict {v.verdict} ({v.reason}); budget to break = "
          f"{v.decided_at_k if v.verdict == 'broken' else '-'} {doc.budget_axis} -> {out}/attack.json")
