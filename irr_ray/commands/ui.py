"""``irr-ray ui --study DIR``: serve the study's MLflow tracking database on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile

from irr_ray.tracking.ui import LOOPBACK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="DIR", help="study directory (holds mlflow.db)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000; 0 = any free port)")
    parser.add_argument("--host", default=None,
                        help=f"interface to bind (default {LOOPBACK}); anything else exposes an "
                             "unauthenticated server and must be asked for explicitly")
    parser.add_argument("--allowed-hosts", default=None, metavar="HOSTS",
                        help="MLflow Host-header allow-list when reached by a name other than localhost "
                             "or a private IP (comma-separated, e.g. mlflow.example.org)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from irr_ray.tracking.ui import experiment_links, is_loopback, start_ui, stop_ui

    # Ctrl-C and `kill` stop the server cleanly. SIGINT is set explicitly: a process started in the
    # background of a non-interactive shell (`cmd &`, nohup, some CI runners) inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)

    host = args.host or LOOPBACK
    if not is_loopback(host):
        print(f"warning: serving the MLflow UI on {host}:{args.port} without authentication; anyone who can "
              "reach it can read and modify this study's runs", file=sys.stderr)
    print(f"starting the MLflow UI for {args.study} ...", flush=True)
    with tempfile.TemporaryFile() as log:
        proc, url = start_ui(args.study, port=args.port, host=host, allow_remote=args.host is not None,
                             allowed_hosts=args.allowed_hosts, log=log)
        try:
            print(f"MLflow UI: {url}   (Ctrl-C to stop)", flush=True)
            for name, link in experiment_links(args.study, url):
                print(f"  runs of {name}: {link}", flush=True)
            proc.wait()
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            print(f"mlflow server exited with code {proc.returncode}:\n{tail}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("stopping the MLflow UI ...", flush=True)
            return 0
        finally:
            stop_ui(proc)
