"""``irr-ray attack-all``: attack every model of a study as a Ray task group — each sweep checkpoint
(``STUDY/checkpoints/*/``), the original (source) model and the base model — one task per model,
in parallel; results in ``STUDY/attacks/<name>/``, K-curves logged to MLflow.

Settings come from the study file (``--config``, default ``STUDY/config.yaml``): its ``attack:``
section (AttackConfig), ``tracking:`` (uri, experiment), ``ray:`` (address, num_cpus),
``source_model`` / ``base_model`` (or ``data.source_model``); flags override them. Finished models
are skipped; a failing model is reported and the exit code is 1, the others' results are kept.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study directory (checkpoints/, data/, attacks/, mlflow.db)")
    parser.add_argument("--config", help="study YAML (default: STUDY/config.yaml when present)")
    parser.add_argument("--source-model", help="the original (instruct) model, attacked as `original`")
    parser.add_argument("--base-model", help="the base model, attacked as `base`")
    parser.add_argument("--data-dir", help="study dataset (default: STUDY/data)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's; 'none' disables)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: local Ray)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the study file, e.g. --set attack.k_max=4 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from irr_ray.attack.taskgroup import run_attack_all
    from irr_ray.study import StudyPaths
    from irr_ray.study_config import StudyConfig, load_section
    from irr_ray.tracking.mlflow_utils import resolve_tracking_uri

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = StudyPaths.at(args.study)
    config = args.config or (paths.config if paths.config.is_file() else None)
    study = load_section(config, None, StudyConfig, overrides=args.overrides)
    from irr_ray.preflight import check_input_dir, check_models, check_study_dir

    check_input_dir(args.study, "--study")
    check_study_dir(args.study)
    check_input_dir(args.data_dir or paths.data, "--data-dir", needs=("train.parquet", "holdout.parquet"))
    check_models([(args.source_model or study.source_model or study.data.source_model, "source_model"),
                  (args.base_model or study.base_model, "base_model")])
    uri = args.tracking_uri or study.tracking.uri
    # without a study name (no file, or a file without `name:`) the task group names the experiment
    experiment = study.tracking.experiment or (study.name if "name" in study.model_fields_set else None)
    report = run_attack_all(
        args.study, study.attack, source_model=args.source_model or study.source_model or study.data.source_model,
        base_model=args.base_model or study.base_model, data_dir=args.data_dir,
        tracking_uri=None if uri == "none" else resolve_tracking_uri(uri, paths.root), experiment=experiment,
        ray_address=args.ray_address or study.ray.address, ray_num_cpus=study.ray.num_cpus)
    for name, res in sorted(report.finished.items()):
        if "attack_rank" in res:  # its dim attack ran now
            rank = f"> {study.attack.k_max}" if res["censored"] else str(res["attack_rank"])
            line = (f"  {name:<24} attack_rank {rank:<5} K=0 harmful {res['k0_refusal_harmful']:.2f} "
                    f"harmless {res['k0_refusal_harmless']:.2f}")
        else:  # dim finished in an earlier run; only (some of) its suite attacks ran now
            line = f"  {name:<24} " + ", ".join(f"{a} {r['verdict']}" for a, r in res.items() if isinstance(r, dict))
        if "suite_verdict" in res:
            line += f"  suite: {res['suite_verdict']} (strongest: {res['strongest']})"
        print(line)
    for name in report.skipped:
        print(f"  {name:<24} already finished (skipped)")
    for name, err in sorted(report.failed.items()):
        print(f"  {name:<24} FAILED: {err}")
    print(f"attack-all: {len(report.finished)} finished, {len(report.skipped)} skipped, {len(report.failed)} failed "
          f"in {report.wall_s:.0f}s -> {args.study}/attacks/")
    return 0 if report.ok else 1
