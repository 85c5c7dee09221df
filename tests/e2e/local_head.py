"""A local Ray head for `ray job submit` tests, as on a cluster: ``ray start --head --block`` in its own
process group, with a temp dir and ports of its own, listening on 127.0.0.1 only; stopped (and every
process it left behind killed) when the context ends, so nothing outlives a test."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from irr_ray.tracking.ui import free_port


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    # Head, CLI and the job's driver must agree on token auth. Left unset, each process turns it on
    # only if ~/.ray/auth_token happens to exist (earlier tests' ray.init() writes one): say it once.
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


@dataclass
class Job:
    status: object
    logs: str


@dataclass
class LocalHead:
    address: str
    env: dict[str, str]

    def submit_and_wait(self, workdir: Path, entrypoint: list[str], timeout_s: float) -> Job:
        """``ray job submit --working-dir WORKDIR --no-wait -- ENTRYPOINT``; poll until the job ends
        (stopped if the test fails first); its final status and logs."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        job_id = f"irr-ray-e2e-{os.getpid()}-{int(time.time())}"
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", self.address, "--working-dir", str(workdir),
             "--submission-id", job_id, "--no-wait", "--", *entrypoint],
            env=self.env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        client = JobSubmissionClient(self.address)
        final = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        try:
            deadline = time.monotonic() + timeout_s
            while (status := client.get_job_status(job_id)) not in final:
                assert time.monotonic() < deadline, f"job still {status} after {timeout_s} s"
                time.sleep(5)
            return Job(status, client.get_job_logs(job_id))
        finally:
            if client.get_job_status(job_id) not in final:
                client.stop_job(job_id)  # the entrypoint's process group goes with it


@contextmanager
def local_head(log: Path, num_cpus: int = 2) -> Iterator[LocalHead]:
    temp_dir = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's socket paths are length-limited
    dash_port = free_port()
    address = f"http://127.0.0.1:{dash_port}"
    env = ray_env()
    head_cmd = [shutil.which("ray", path=env["PATH"]) or "ray", "start", "--head", "--block",
                "--num-cpus", str(num_cpus), "--port", str(free_port()), "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dash_port), "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp_dir, "--disable-usage-stats"]
    with open(log, "wb") as log_f:
        head = subprocess.Popen(head_cmd, stdout=log_f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_dashboard(address, head, log)
        yield LocalHead(address, env)
    finally:
        _stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
