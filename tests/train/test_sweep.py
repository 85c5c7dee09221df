"""The sweep on real Ray (2 CPUs, one instance for the module) with MLflow on SQLite, on the organism.

One sweep of eight trials under Optuna × ASHA exercises all three failure paths at once (one sweep
instead of three keeps the module to a few minutes on 2 cores):

1. fault injection kills one trial's worker process after its first epoch: Tune restarts the trial
   from its epoch-1 checkpoint (``FailureConfig``) and it finishes;
2. once that trial has finished, the driver gets SIGINT (Ctrl-C): ``irr-ray sweep`` exits 130 with
   every MLflow run ended (none RUNNING) and its Tune state saved;
3. ``irr-ray sweep --resume`` completes the remaining trials without rerunning finished ones.

At the end: 8 trials, some stopped early by ASHA, the parent run plus one child run per trial with
one metric value per epoch, every trial's last checkpoint exported as an HF model directory.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
from transformers import AutoConfig

from irr_ray.cli import main
from irr_ray.tracking.names import ROLE_TAG, STAGE_TAG, SWEEP_ROLE
from irr_ray.train.trainable import FAULT_EPOCH_ENV, FAULT_MARKER_ENV

NAME = "sweep-test"


def _runs(study_dir: Path, experiment: str = "train-tests"):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return client, runs


def _children(runs, parent_id: str | None = None):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId")
            and (parent_id is None or r.data.tags["mlflow.parentRunId"] == parent_id)]


class Interrupter(threading.Thread):
    """Sends SIGINT to this process (the sweep's driver) once the trial whose worker was killed has
    finished after its restart, while other trials are still to run; records the finished runs."""

    def __init__(self, study_dir: Path, marker: Path, n_trials: int, timeout: float = 400.0) -> None:
        super().__init__(daemon=True)
        self.study_dir, self.marker, self.n_trials, self.timeout = study_dir, marker, n_trials, timeout
        self.finished: dict[str, tuple[int, int]] = {}  # run id -> (end time, objective values)
        self.sent = False
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while not self.stop.wait(1.0) and time.time() < deadline:
            if not self.marker.is_file() or not (self.study_dir / "sweep" / f"{NAME}.mlflow.json").is_file():
                continue
            killed = json.loads(self.marker.read_text())["trial_id"]
            client, runs = _runs(self.study_dir)
            children = _children(runs)
            done = [r for r in children if r.info.status == "FINISHED"]
            if not any(r.data.tags.get("irr_ray.trial_id") == killed for r in done):
                continue
            if len([r for r in children if r.info.status in ("FINISHED", "KILLED")]) >= self.n_trials - 2:
                return  # too close to the end to interrupt safely; the test fails on `sent`
            self.finished = {r.info.run_id: (r.info.end_time, len(client.get_metric_history(r.info.run_id, "objective")))
                             for r in done}
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler: stop gracefully, save the state
            return


def test_sweep_killed_worker_interrupt_and_resume(write_study, ray_session, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config, study_dir = write_study({}, name=NAME)
    sigint_before = signal.getsignal(signal.SIGINT)
    marker = tmp_path / "fault.json"
    monkeypatch.setenv(FAULT_EPOCH_ENV, "1")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))

    interrupter = Interrupter(study_dir, marker, n_trials=8)
    interrupter.start()
    try:
        code = main(["sweep", "--config", str(config), "--quiet"])
    finally:
        interrupter.stop.set()
        interrupter.join()
    assert interrupter.sent, "the killed trial did not finish while other trials were left to interrupt"
    assert code == 130
    assert not (study_dir / "sweep" / f"{NAME}.summary.json").exists()
    _, runs = _runs(study_dir)
    assert not [r for r in runs if r.info.status == "RUNNING"], "the interrupted sweep left runs RUNNING"

    assert main(["sweep", "--config", str(config), "--resume", "--quiet"]) == 0
    # Tune's own SIGINT handler is not left behind: a Ctrl-C in a later stage of the same process
    # (the attack stage of `irr-ray run`) still interrupts it
    assert signal.getsignal(signal.SIGINT) is sigint_before
    outcome = json.loads((study_dir / "sweep" / f"{NAME}.summary.json").read_text())
    trials = outcome["trials"]
    assert len(trials) == 8
    assert all(t["status"] in ("FINISHED", "KILLED") and t["checkpoint"] for t in trials), trials
    assert any(t["stopped_early"] for t in trials), "ASHA stopped no trial"
    assert any(t["epochs_completed"] == 2 for t in trials)

    # The killed trial resumed from its epoch-1 checkpoint and finished.
    killed = json.loads(marker.read_text())
    assert killed["after_epoch"] == 1
    exported = {t["trial_id"]: json.loads((Path(t["checkpoint"]) / "trial.json").read_text()) for t in trials}
    assert exported[killed["trial_id"]]["metrics"]["resumed_from_epoch"] == 1.0
    assert exported[killed["trial_id"]]["epochs_completed"] == 2

    client, runs = _runs(study_dir)
    parents = [r for r in runs if r.data.tags.get(STAGE_TAG) == SWEEP_ROLE]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags[ROLE_TAG] == SWEEP_ROLE  # what the report looks for
    assert parents[0].info.run_id == outcome["parent_run_id"]
    children = _children(runs, outcome["parent_run_id"])
    assert len(children) == 8
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in children}
    for t in trials:
        info = exported[t["trial_id"]]
        run = by_id[info["mlflow_run_id"]]
        assert run.info.status == ("KILLED" if t["stopped_early"] else "FINISHED")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "objective")]
        # one value per epoch (a trial cut off between logging and its checkpoint may log an epoch twice)
        assert sorted(set(steps)) == list(range(1, t["epochs_completed"] + 1)), (t, steps)
        degenerate = client.get_metric_history(run.info.run_id, "train/degenerate_steps")
        assert degenerate and all(m.value == 0 for m in degenerate)  # both penalties defined on every batch
        assert run.data.tags["checkpoint_path"] == t["checkpoint"]
        assert info["stopped_early"] == t["stopped_early"] and info["config"]["model"]
        AutoConfig.from_pretrained(t["checkpoint"])  # an HF model directory
        assert (Path(t["checkpoint"]) / "model.safetensors").is_file()

    # Finished trials were not run again by --resume.
    assert interrupter.finished
    for run_id, (end_time, n_values) in interrupter.finished.items():
        assert client.get_run(run_id).info.end_time == end_time, "a finished trial was run again"
        assert len(client.get_metric_history(run_id, "objective")) == n_values
