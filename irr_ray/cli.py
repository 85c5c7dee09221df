"""``irr-ray`` command line: one subcommand per stage, each a thin module in ``irr_ray.commands``.

Subcommand modules are imported lazily, so ``irr-ray --help`` answers before torch or Ray load.
Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. Any
:class:`irr_ray.errors.IrrRayError` becomes one line on stderr and exit code 2, and so does an
environment failure while writing (permission denied, read-only file system, disk full: the
:mod:`irr_ray.preflight` checks catch most of these before any work); Ctrl-C is one line and exit
code 130. Only a genuine bug shows a traceback. The checks every command runs first, and the rule
that no command writes over a file it did not create, live in :mod:`irr_ray.preflight`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# Failures of the environment, not of irr-ray: one line naming the file, exit 2.
ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, or an error raised while a Ctrl-C unwound (e.g. a lock released twice by a library)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__context__ or e.__cause__
    return False

COMMANDS: dict[str, str] = {
    "organism": "build the model organism (tiny chat model + WildGuardMix-shaped data)",
    "data": "data stage on Ray Data: validate, filter, generate, judge, balanced split",
    "train": "fine-tune one condition (matching + KD) into an HF checkpoint",
    "sweep": "Ray Tune sweep (Optuna x ASHA) over lambda_mean / lambda_cov / KD",
    "eval": "K=0 evaluation: refusal rates with Wilson intervals, probes",
    "attack": "iterated directional-ablation attack on one model",
    "attack-all": "attack every model of a study as a Ray task group",
    "run": "run a whole study (data -> sweep -> attack -> track -> report)",
    "reproduce": "the reproduction study: organism seeds x training seeds x the method's conditions",
    "plan": "per stage FLOPs, GPU-hours and wall time of a study on N GPUs (size a cluster)",
    "report": "report table + Pareto plot of a study",
    "ui": "serve the study overview and its MLflow UI on 127.0.0.1",
    "sentiment": "GPT-2 / IMDB-style proof of concept: matching vs LEACE / INLP",
    "bench": "benchmarks that print side-by-side ratios",
    "abliterate": "write an HF checkpoint with refusal directions orthogonalised out of its weights",
}


def _module(name: str):
    return importlib.import_module("irr_ray.commands." + name.replace("-", "_"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irr-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _module(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from irr_ray.errors import IrrRayError

    try:
        return int(_module(args.command).run(args) or 0)
    except IrrRayError as exc:
        print(f"irr-ray {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"irr-ray {args.command}: interrupted (rerun with the same arguments to resume)", file=sys.stderr)
        return 130
    except OSError as exc:
        if _interrupted(exc):
            print(f"irr-ray {args.command}: interrupted (rerun with the same arguments to resume)", file=sys.stderr)
            return 130
        if exc.errno not in ENV_ERRNOS:
            raise
        print(f"irr-ray {args.command}: error: {exc.strerror} ({exc.filename or 'output'})", file=sys.stderr)
        return 2
    except Exception as exc:
        if not _interrupted(exc):
            raise
        print(f"irr-ray {args.command}: interrupted (rerun with the same arguments to resume)", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The message on one line (a multi-line message is joined with ' | ')."""
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
