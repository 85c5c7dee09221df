"""``irr-ray ui --study DIR``: the study overview (opened first) and the study's MLflow UI, both on
127.0.0.1, until Ctrl-C.

The overview (:mod:`irr_ray.tracking.overview_server`) answers the study's question on first load —
every model with its verdict, strongest attack, robust_k, attack_rank and K=0 refusal, and the chart
of robustness against K=0 refusal — with the report and the Pareto plot one click away and each
model linked to its run in the MLflow UI beside it (:mod:`irr_ray.tracking.ui`). Everything is
checked before a server starts: the study directory, its ``mlflow.db``, both ports and the attack
results (a study nobody attacked yet has nothing to show: one line naming its ``attacks/``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile

from irr_ray.tracking.ui import LOOPBACK

DEFAULT_PORT = 5000
DEFAULT_MLFLOW_PORT = 5001


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="DIR", help="study directory (holds mlflow.db and attacks/)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port of the study overview, the page to open (default {DEFAULT_PORT}; 0 = any free port)")
    parser.add_argument("--mlflow-port", type=int, default=DEFAULT_MLFLOW_PORT,
                        help=f"port of the MLflow UI (default {DEFAULT_MLFLOW_PORT}; 0 = any free port)")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default {LOOPBACK}); anything else exposes unauthenticated "
                             "servers and must be asked for explicitly")
    parser.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                        help="Host-header allow-list when reached by a name other than localhost or a private IP "
                             "(comma-separated, e.g. mlflow.example.org)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_inputs(args: argparse.Namespace, host: str) -> None:
    """Every check that can fail, before any server starts (one line naming the culprit)."""
    from irr_ray.errors import ConfigError
    from irr_ray.report.collect import collect_rows
    from irr_ray.study import StudyPaths
    from irr_ray.tracking.ui import check_port_free, check_study

    check_study(StudyPaths.at(args.study))
    check_port_free(host, args.port, "--port")
    check_port_free(host, args.mlflow_port, "--mlflow-port")
    if args.port == args.mlflow_port != 0:
        raise ConfigError(f"--port and --mlflow-port are both {args.port}: the overview and the MLflow UI "
                          "need a port each")
    collect_rows(args.study)  # the attack results, through their contracts: a study without any has nothing to show


def run(args: argparse.Namespace) -> int:
    from irr_ray.tracking.overview_server import OverviewServer
    from irr_ray.tracking.ui import experiment_links, is_loopback, start_ui, stop_ui, ui_url

    # Ctrl-C and `kill` stop the servers cleanly. SIGINT is set explicitly: a process started in the
    # background of a non-interactive shell (`cmd &`, nohup, some CI runners) inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    host = args.host or LOOPBACK
    _check_inputs(args, host)
    if not is_loopback(host):
        print(f"warning: serving the study overview and the MLflow UI on {host} without authentication; anyone "
              "who can reach them can read this study, and modify its runs", file=sys.stderr)
    print(f"starting the MLflow UI for {args.study} ...", flush=True)
    allowed = frozenset(h.strip() for h in (args.allowed_hosts or "").split(",") if h.strip())
    with tempfile.TemporaryFile() as log:
        proc, mlflow_url = start_ui(args.study, port=args.mlflow_port, host=host, allow_remote=args.host is not None,
                                    allowed_hosts=args.allowed_hosts, log=log, port_flag="--mlflow-port")
        overview = None
        try:
            overview = OverviewServer(args.study, mlflow_url, host, args.port, allowed).start()
            shown = ui_url(host, overview.port)
            print(f"Study overview: {shown}/   (open this first; Ctrl-C stops both)", flush=True)
            print(f"MLflow UI: {mlflow_url}", flush=True)
            for name, link in experiment_links(args.study, mlflow_url):
                print(f"  runs of {name}: {link}", flush=True)
            proc.wait()
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            print(f"mlflow server exited with code {proc.returncode}:\n{tail}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("stopping the MLflow UI and the study overview ...", flush=True)
            return 0
        finally:
            if overview is not None:
                overview.stop()
            stop_ui(proc)
