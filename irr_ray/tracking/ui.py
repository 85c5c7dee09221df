"""Serve a study's MLflow tracking database with the MLflow UI (``irr-ray ui --study DIR``).

Runs ``mlflow server --backend-store-uri sqlite:////abs/<study>/mlflow.db --default-artifact-root
<study>/mlartifacts --host 127.0.0.1 --port P --workers 1`` as a child process in its own process
group (the server forks workers; stopping the group stops them all) and waits until ``/health``
answers. Binding beyond loopback is refused unless asked for explicitly (``allow_remote=True``,
which ``irr-ray ui --host`` sets): MLflow has no authentication here, so anyone who can reach the
port can read and change the study's runs. MLflow ≥ 3.5 also checks the Host header: the default
accepts localhost and private IPs; other host names need ``allowed_hosts``.

``irr-ray ui`` serves this next to the study overview (:mod:`irr_ray.tracking.overview_server`),
which is what it opens first and which links every model to its run here.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from irr_ray.errors import ConfigError, IrrRayError
from irr_ray.study import StudyPaths
from irr_ray.tracking.mlflow_utils import sqlite_uri

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (for tests and ``--port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, flag: str = "--port") -> None:
    """One line naming ``flag`` before anything is started or created when ``host:port`` is taken."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {port} is not a TCP port (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot serve on {host}:{port} ({exc.strerror or exc}): another process uses "
                              f"the port; pass another {flag} (or {flag} 0 for any free one)") from None


def ui_url(host: str, port: int) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def server_command(study_dir: str | Path, host: str = LOOPBACK, port: int = 5000,
                   allowed_hosts: str | None = None, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line serving ``study_dir``'s database and artifacts."""
    paths = StudyPaths.at(study_dir)
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", sqlite_uri(paths.mlflow_db),
           "--default-artifact-root", paths.mlflow_artifacts.as_uri(),
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def experiment_links(study_dir: str | Path, url: str) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs with the metric charts) for each experiment holding runs."""
    import mlflow

    client = mlflow.MlflowClient(sqlite_uri(StudyPaths.at(study_dir).mlflow_db))
    return [(e.name, f"{url}/#/experiments/{e.experiment_id}/runs?compareRunsMode=CHART")
            for e in client.search_experiments()
            if client.search_runs([e.experiment_id], max_results=1)]


def check_study(paths: StudyPaths) -> None:
    """One line naming the path when the study directory or its MLflow database is missing."""
    if not paths.root.is_dir():
        raise IrrRayError(f"study directory not found: {paths.root}")
    if (paths.root / "grid.json").is_file() and not paths.mlflow_db.is_file():
        studies = sorted(p.name for p in paths.root.glob("organism-seed*") if p.is_dir())
        raise IrrRayError(f"{paths.root} is a reproduction root: its claims table is {paths.root / 'claims.md'} "
                          f"(`irr-ray report --study {paths.root}`); browse one of its studies with --study "
                          f"{paths.root / (studies[0] if studies else 'organism-seed0')}")
    if not paths.mlflow_db.is_file():
        raise IrrRayError(f"no MLflow database at {paths.mlflow_db}: run a stage of the study first "
                          "(`irr-ray run ...`); a study tracked on an MLflow server is browsed on that server")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _tail(log: IO[bytes] | None, n: int = 2000) -> str:
    if log is None:
        return ""
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-n:]


def _last_line(log: IO[bytes] | None) -> str:
    lines = [line.strip() for line in _tail(log).splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(empty)"


def start_ui(study_dir: str | Path, port: int = 5000, host: str = LOOPBACK, allow_remote: bool = False,
             allowed_hosts: str | None = None, timeout_s: float = 180.0,
             log: IO[bytes] | None = None, port_flag: str = "--port") -> tuple[subprocess.Popen, str]:
    """Start the MLflow UI on ``study_dir``; return ``(process, url)`` once ``/health`` answers.

    ``port=0`` picks a free port; errors about it name ``port_flag`` (the CLI option that set it).
    The server's output goes to ``log`` (a binary file), or to a
    temporary file whose tail is shown if the server fails to start. Stop it with :func:`stop_ui`.
    """
    paths = StudyPaths.at(study_dir)
    check_study(paths)
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to serve the MLflow UI on {host}: it has no authentication. "
                          "Bind 127.0.0.1 and port-forward, or pass --host explicitly to accept the risk")
    port = free_port() if port == 0 else port
    check_port_free(host, port, port_flag)
    paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    out = log if log is not None else tempfile.TemporaryFile()
    # no telemetry; no GenAI job runner (it forks seven huey consumers the UI does not need)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(server_command(paths.root, host, port, allowed_hosts), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = ui_url(host, port)
    deadline = time.monotonic() + timeout_s
    try:
        while not _answers(url):
            if proc.poll() is not None:
                raise IrrRayError(f"mlflow server exited with code {proc.returncode} before answering on "
                                  f"{url} (port in use? try {port_flag}); last log line: {_last_line(out)}")
            if time.monotonic() > deadline:
                raise IrrRayError(f"mlflow server did not answer on {url} within {timeout_s:.0f} s; "
                                  f"last log line: {_last_line(out)}")
            time.sleep(0.5)
    except BaseException:  # includes Ctrl-C while waiting: never leave a server behind
        stop_ui(proc)
        raise
    return proc, url


def _live_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies (a zombie whose parent died may never be
    reaped when PID 1 is not an init that reaps, e.g. in containers — signalling it succeeds forever)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            pids.append(int(entry))
    return pids


def stop_ui(proc: subprocess.Popen, grace_s: float = 10.0, kill_wait_s: float = 10.0) -> None:
    """Stop the server and every process it forked (its process group): SIGTERM, then SIGKILL
    after ``grace_s``; returns once no live process is left in the group (or ``kill_wait_s`` after
    the SIGKILL, which only an unkillable process survives)."""
    sig = signal.SIGTERM
    deadline = time.monotonic() + grace_s
    while True:
        proc.poll()  # reap the leader, or its zombie counts as a member
        if os.path.isdir("/proc") and not _live_members(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the whole group is gone
            break
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL and time.monotonic() > deadline + kill_wait_s:
                break
            sig = signal.SIGKILL
        time.sleep(0.2)
    proc.wait()
