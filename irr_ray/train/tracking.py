"""MLflow runs of a sweep: one parent run per sweep, one child run per Tune trial.

A trial finds its child run by the tags ``irr_ray.trial_id`` + ``mlflow.parentRunId`` (creating it
the first time), so a trial restarted after a worker crash — or resumed with the sweep — keeps
logging into the same run. Runs end FINISHED (all epochs), KILLED (stopped early by ASHA, or cut
off) or FAILED (error). A trial's own code cannot always close its run — ASHA stops a trial and
a dead worker runs no ``finally`` — so the driver closes them: :class:`TrialRunStatusCallback`
as trials end, and :func:`close_open_children` once the sweep returns.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from ray import tune

from irr_ray.tracking.mlflow_utils import log_params
from irr_ray.tracking.names import PARENT_RUN_TAG, STOPPED_EARLY_TAG, TRIAL_ID_TAG

log = logging.getLogger(__name__)

PARENT_TAG = PARENT_RUN_TAG
FINISHED, KILLED, FAILED, RUNNING = "FINISHED", "KILLED", "FAILED", "RUNNING"


@functools.lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=1)
    return runs[0].info.run_id if runs else None


class TrialRun:
    """The child run of one trial, used from inside the trial."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.client = _client(uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None

    def open(self, trial_id: str, trial_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Find-or-create the trial's run and mark it RUNNING; params are logged on creation."""
        run_id = find_trial_run(self.client, self.experiment_id, self.parent_run_id, trial_id)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=trial_name,
                tags={PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: trial_id, **tags})
            run_id = run.info.run_id
            log_params(self.client, run_id, params)
        else:
            self.client.update_run(run_id, status=RUNNING)
        self.run_id = run_id
        return run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=items)  # type: ignore[arg-type]

    def close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


def terminate_if_open(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, status: str,
                      tags: dict[str, str] | None = None) -> None:
    """Set the trial's run to ``status`` unless it already ended; add ``tags``."""
    client = _client(uri)
    run_id = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run_id is None:
        return
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    if client.get_run(run_id).info.status == RUNNING:
        client.set_terminated(run_id, status)


def close_open_children(uri: str, experiment_id: str, parent_run_id: str, status: str = KILLED) -> int:
    """End every child run of the parent still RUNNING (the sweep is over); returns how many."""
    client = _client(uri)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=10_000)
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return len(runs)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_status(error: bool, iterations: int, max_iterations: int) -> str:
    """MLflow status of a finished Tune trial: FAILED on error, KILLED if stopped before the last epoch."""
    if error:
        return FAILED
    return FINISHED if iterations >= max_iterations else KILLED


# Trials started / ended in this driver process, per experiment. Module-level because Tuner.restore
# runs the callback instance unpickled from the experiment state, not the driver's own object.
_EVENTS: dict[str, dict[str, set[str]]] = {}


def trial_events(key: str) -> dict[str, set[str]]:
    return _EVENTS.setdefault(key, {"started": set(), "ended": set()})


def unfinished_trials(key: str) -> set[str]:
    """Trials this process started (or restored) that Tune never completed nor failed: on Ctrl-C
    Tune stops running trials (status TERMINATED) without completing them."""
    events = trial_events(key)
    return events["started"] - events["ended"]


class TrialRunStatusCallback(tune.Callback):
    """Driver-side: closes a trial's MLflow run when Tune ends the trial, records which trials
    started and ended (:func:`unfinished_trials`), and prints one line per reported epoch."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, max_epochs: int, metric: str,
                 verbose: bool = True, *, key: str = "") -> None:
        self.uri = uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        self.metric = metric
        self.key = key
        self.verbose = verbose
        self.t0 = time.monotonic()

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[sweep +{time.monotonic() - self.t0:.0f}s] {text}", flush=True)

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored with the experiment: new clock
        self.__dict__.update(state)
        self.t0 = time.monotonic()

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_events(self.key)["started"].add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        trial_events(self.key)["started"].add(trial.trial_id)
        self._say(f"{trial} started: " + ", ".join(f"{k}={_short(v)}" for k, v in (trial.config or {}).items()))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        self._say(f"{trial} epoch {result.get('training_iteration')}/{self.max_epochs} "
                  f"{self.metric}={_short(result.get(self.metric))} refusal harmful/harmless="
                  f"{_short(result.get('eval/refusal_harmful'))}/{_short(result.get('eval/refusal_harmless'))}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        done = int((trial.last_result or {}).get("training_iteration", 0))
        status = trial_status(False, done, self.max_epochs)
        self._close(trial, status)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, FAILED)

    def _close(self, trial: Any, status: str) -> None:
        trial_events(self.key)["ended"].add(trial.trial_id)
        try:
            terminate_if_open(self.uri, self.experiment_id, self.parent_run_id, trial.trial_id, status,
                              tags={STOPPED_EARLY_TAG: str(status == KILLED).lower()})
        except Exception as exc:  # tracking must never take the sweep down; the final pass retries
            log.warning("could not close the MLflow run of trial %s: %s", trial.trial_id, exc)
        self._say(f"{trial} ended: {status}")
