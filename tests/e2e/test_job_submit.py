"""A reduced organism study submitted to a local Ray head with `ray job submit`, as on a cluster:
the job runs `irr-ray run` from an uploaded working directory, must end SUCCEEDED, and leave a
complete study directory (attacks, report) and MLflow runs behind. The head is started here
(`ray start --head --block` in its own process group, temp dir and ports of its own) and stopped in
`finally`, so nothing outlives the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from irr_ray.tracking.ui import free_port

REPO = Path(__file__).resolve().parents[2]
ORGANISM_YAML = REPO / "experiments" / "organism.yaml"
# Shrinks experiments/organism.yaml to a smoke-sized study: 2 trials of 1 epoch, a 2-direction attack
# on small prompt sets. The organism itself is the suite's cached one (`organism_dir` fixture).
REDUCED = ["data.max_samples=400", "sweep.num_samples=2", "sweep.max_concurrent_trials=1",
           "sweep.points_to_evaluate=[cov_kd]", "train.epochs=1", "train.max_train_samples=64",
           "train.eval.n_per_class=8", "attack.k_max=2", "attack.extract_n=32", "attack.score_n=8",
           "attack.eval_n=32", "attack.suite=[dim,orthogonalize]", "attack.orthogonalize.budgets=[1]"]
JOB_TIMEOUT_S = 1800

pytestmark = [pytest.mark.slow]  # a missing or renamed study file fails the test (shutil.copy), never skips it


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    # Head, CLI and the job's driver must agree on token auth. Left unset, each process turns it on
    # only if ~/.ray/auth_token happens to exist (earlier tests' ray.init() writes one): say it once.
    # The head listens on 127.0.0.1 only.
    env["RAY_AUTH_MODE"] = "disabled"
    # the job's entrypoint runs with the PATH of the head: put this venv's `irr-ray` first
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _wait_dashboard(url: str, head: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=3) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Ray dashboard at {url} answered {exc.code} (token auth mismatch?)")
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"Ray dashboard did not answer on {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def _stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM to `ray start --block` (it stops the processes it started), then SIGKILL any process
    of this head left behind: those whose command line names this head's own temp dir."""
    if head.poll() is None:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(JOB_TIMEOUT_S + 600, func_only=True)  # the shared organism build is a fixture
def test_ray_job_submit_runs_a_reduced_organism_study(tmp_path: Path, organism_dir: Path) -> None:
    import mlflow
    from ray.job_submission import JobStatus, JobSubmissionClient

    workdir = tmp_path / "job"
    workdir.mkdir()
    shutil.copy(ORGANISM_YAML, workdir / "organism.yaml")
    study = tmp_path / "study"
    temp_dir = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's socket paths are length-limited
    dash_port = free_port()
    address = f"http://127.0.0.1:{dash_port}"
    env = _ray_env()
    log = tmp_path / "ray_head.log"
    head_cmd = [shutil.which("ray", path=env["PATH"]) or "ray", "start", "--head", "--block", "--num-cpus", "2",
                "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                "--temp-dir", temp_dir, "--disable-usage-stats"]
    job_id = f"irr-ray-e2e-{os.getpid()}-{int(time.time())}"
    client = None
    with open(log, "wb") as log_f:
        head = subprocess.Popen(head_cmd, stdout=log_f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_dashboard(address, head, log)
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", address, "--working-dir", str(workdir), "--submission-id", job_id,
             "--no-wait", "--", "irr-ray", "run", "organism.yaml", "--study-dir", str(study),
             "--set", f"organism.dir={organism_dir}", *[a for kv in REDUCED for a in ("--set", kv)]],
            env=env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        client = JobSubmissionClient(address)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                 JobStatus.STOPPED}:
            assert time.monotonic() < deadline, f"job still {status} after {JOB_TIMEOUT_S} s"
            time.sleep(5)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs[-5000:]

        attacks = sorted(p.parent.name for p in (study / "attacks").glob("*/attack.json"))
        assert {"original", "base"} <= set(attacks) and len(attacks) >= 3, attacks
        suite = sorted(p.parent.parent.name for p in (study / "attacks").glob("*/orthogonalize/attack.json"))
        assert suite == attacks, suite  # the suite ran on every model, with a profile each
        assert all((study / "attacks" / name / "profile.json").is_file() for name in attacks)
        assert (study / "report.md").is_file() and (study / "pareto.png").is_file()
        assert "attack_rank" in logs  # the report table printed at the end of the run

        client_ml = mlflow.MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
        runs = [r for e in client_ml.search_experiments() for r in client_ml.search_runs([e.experiment_id])]
        ranked = [r for r in runs if "attack_rank" in r.data.metrics]
        assert len(ranked) == len(attacks), [r.info.run_name for r in runs]
        assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
        assert any("mlflow.parentRunId" in r.data.tags for r in runs)  # sweep trials are child runs
    finally:
        if client is not None and client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                          JobStatus.STOPPED}:
            client.stop_job(job_id)  # the entrypoint's process group goes with it
        _stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
