"""Faults: an attack task's worker process is killed (SIGKILL) in the middle of a study.

The study runs with ``attack.max_retries=0`` so Ray does not hide the crash by retrying: the first
``irr-ray run`` must report the lost model and exit non-zero while keeping every other model's
result; ``irr-ray run --resume`` must then finish the study, attacking only the lost model —
finished results are neither recomputed nor lost (their files are byte-identical, same mtime).
The sweep stage is left out to keep the test small: the task group attacks the original and the
base model, two tasks at once on two CPUs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORGANISM_YAML = REPO / "experiments" / "organism.yaml"
REDUCED = ["data.max_samples=400", "attack.k_max=2", "attack.extract_n=32", "attack.score_n=8",
           "attack.eval_n=32", "attack.stop_below_threshold=false", "attack.resources.max_retries=0", "attack.suite=[dim]", "stages=[organism,data,attack,report]"]

pytestmark = pytest.mark.slow


def _irr_ray(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "irr-ray"), *args]


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state; the name may hold ")"


def _descends_from(pid: int, ancestor: int) -> bool:
    try:
        while pid > 1:
            pid = _parent(pid)
            if pid == ancestor:
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def _attack_workers(driver: int) -> dict[int, str]:
    """pid -> task name of every live Ray worker process of ``driver``'s local Ray (its raylet's
    children) executing an attack task right now (Ray sets a worker's process title to
    ``ray::<task name>`` while it runs the task). Attack workers of any other Ray on the machine (a
    second pytest worker's study, another user's) are never touched."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmdline.startswith("ray::attack:") and _descends_from(int(proc.name), driver):
            found[int(proc.name)] = cmdline.split()[0].removeprefix("ray::")
    return found


@pytest.mark.timeout(1800, func_only=True)
def test_killed_attack_worker_then_resume_completes_without_recomputing(tmp_path: Path, organism_dir: Path) -> None:
    study = tmp_path / "study"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    args = ["run", str(ORGANISM_YAML), "--study-dir", str(study), "--set", f"organism.dir={organism_dir}",
            *[a for kv in REDUCED for a in ("--set", kv)]]
    log1 = tmp_path / "run1.log"
    with open(log1, "wb") as out:
        first = subprocess.Popen(_irr_ray(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
    killed = None
    deadline = time.monotonic() + 1500
    try:
        while first.poll() is None and time.monotonic() < deadline:
            workers = _attack_workers(first.pid)
            if workers:
                time.sleep(2)  # let it get into the attack (models loaded, scoring started)
                workers = _attack_workers(first.pid)
                if workers:
                    pid, killed = sorted(workers.items(), key=lambda kv: kv[1])[0]
                    os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.5)
        first.wait(timeout=max(60.0, deadline - time.monotonic()))
    finally:
        if first.poll() is None:
            first.kill()
    text1 = log1.read_text(errors="replace")
    assert killed is not None, "no attack task was ever seen running:\n" + text1[-4000:]
    lost = killed.removeprefix("attack:")
    assert first.returncode != 0, text1[-4000:]
    assert lost in text1 and "--resume" in text1, text1[-4000:]  # the error names the lost model and the fix

    results = {p.parent.name: p for p in (study / "attacks").glob("*/attack.json")}
    assert lost not in results  # nothing half-written for the lost model
    assert results, "the other model's result was lost with the crashed one"
    before = {name: (p.stat().st_mtime_ns, p.read_bytes()) for name, p in results.items()}
    data_files = {name: (study / "data" / name).stat().st_mtime_ns for name in ("train.parquet", "holdout.parquet")}

    second = subprocess.run(_irr_ray(*args, "--resume"), capture_output=True, text=True, env=env, timeout=1500)
    text2 = second.stdout + second.stderr
    assert second.returncode == 0, text2[-4000:]
    after = {p.parent.name: p for p in (study / "attacks").glob("*/attack.json")}
    assert set(after) == set(before) | {lost}
    for name, (mtime, content) in before.items():  # finished results: not recomputed, not lost
        assert after[name].stat().st_mtime_ns == mtime and after[name].read_bytes() == content, name
    # the data stage was not redone either: same split files, and the manifest says nothing was generated
    assert {name: (study / "data" / name).stat().st_mtime_ns for name in data_files} == data_files
    assert json.loads((study / "data" / "manifest.json").read_text())["run"]["generated_rows"] == 0
    assert (study / "report.md").is_file() and "attack_rank" in text2
