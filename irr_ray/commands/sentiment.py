"""``irr-ray sentiment build|train|eval|sweep``: the GPT-2 / IMDB proof of concept.

* ``build``  the review set (local templated reviews, or IMDB) and the source model (a small GPT-2
  trained here by LM, or ``gpt2``), both cached;
* ``train``  fine-tune named conditions (``--condition``, repeatable) on the shared trainer;
* ``eval``   perplexity, class-mean gap, linear / MLP probes, LEACE / INLP on the baseline → table;
* ``sweep``  the λ grid as a Ray Tune ``grid_search`` with MLflow tracking, then the table.

Precedence: defaults < ``--config`` YAML < ``--study-dir`` < ``--set key=value`` overrides.
"""

from __future__ import annotations

import argparse
import logging

ACTIONS = ("build", "train", "eval", "sweep")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="build | train | eval | sweep")
    parser.add_argument("--config", help="study YAML (e.g. experiments/sentiment.yaml)")
    parser.add_argument("--study-dir", help="output directory (default: study_dir of the config)")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME",
                        help="train/eval: a condition of the config (repeatable; default run_conditions)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="eval: evaluate this model directory or hub id instead of trained conditions "
                             "(repeatable; the baseline name gets LEACE / INLP)")
    parser.add_argument("--resume", action="store_true", help="sweep: continue an interrupted sweep")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set sweep.lambdas=[10,100] (repeatable)")


def _models(args: argparse.Namespace, study, paths) -> dict[str, str]:
    from irr_ray.errors import ConfigError
    from irr_ray.sentiment.study import trained_conditions

    if args.model:
        out = {}
        for item in args.model:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--model {item!r}: expected NAME=PATH (e.g. baseline=gpt2)")
            out[name] = path
        return out
    trained = trained_conditions(paths)
    names = args.condition or [n for n in study.run_conditions if n in trained] or sorted(trained)
    missing = [n for n in names if n not in trained]
    if missing:
        raise ConfigError(f"no trained model for {', '.join(missing)} under {paths.conditions}: run "
                          "`irr-ray sentiment train` first")
    return {n: trained[n] for n in names}


def run(args: argparse.Namespace) -> int:
    from irr_ray.sentiment import study as stages
    from irr_ray.sentiment.config import SentimentStudy
    from irr_ray.study_config import load_section

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = load_section(args.config, None, SentimentStudy, {"study_dir": args.study_dir}, args.overrides)
    paths = stages.study_paths(study)
    if args.action == "build":
        source = stages.build(study, paths)
        print(f"sentiment build: data in {paths.data}, source model {source}")
    elif args.action == "train":
        models = stages.train(study, paths, args.condition or None)
        print("sentiment train: " + ", ".join(f"{k} -> {v}" for k, v in models.items()))
    elif args.action == "eval":
        stages.evaluate_and_report(study, paths, _models(args, study, paths))
    else:
        from irr_ray.sentiment.sweep import run_sentiment_sweep

        summary = run_sentiment_sweep(study, paths, resume=args.resume)
        print(f"sentiment sweep: {len(summary['trials'])} trials in {summary['wall_seconds']:.0f}s; "
              f"MLflow parent run {summary['parent_run_id']} at {summary['tracking_uri']}")
    return 0
