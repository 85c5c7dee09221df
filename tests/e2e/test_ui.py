"""`irr-ray ui` end to end: a study's MLflow SQLite database served by the real CLI (a subprocess),
opened in headless Chromium (Debian's, never a downloaded one), with the experiment, its runs and
the `attack_rank` metric visible; screenshots are saved under the test's tmp_path.

The runs are laid out as a study leaves them: the sweep's parent run with one child run per trial
(made here with MlflowClient, as the sweep's trial runs would be), and every attack result (files
built with the contract models, synthetic values) logged by the attack stage's own
`irr_ray.tracking.attack_logging.log_attack` — into the trial's run, or as `attack:original` /
`attack:base` runs nested under the parent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from irr_ray.contracts import AttackDoc
from irr_ray.errors import ConfigError
from irr_ray.study import StudyPaths
from irr_ray.tracking.attack_logging import log_attack
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri
from irr_ray.tracking.ui import start_ui
from tests.report.documents import Shape, attack_doc, curve, write_attack_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPERIMENT = "irr-ray-ui-e2e"
PARENT = "sweep-organism"
K_MAX = 8
# run name -> (attack_rank, K=0 harmful refusal); reference models get `attack:<name>` runs
REFERENCE_RUNS = {"attack:original": (2, 0.95), "attack:base": (0, 0.10)}
TRIAL_RUNS = {"trial_cov_kd": (K_MAX + 1, 0.90), "trial_l1": (3, 0.85)}
RANKS = {**REFERENCE_RUNS, **TRIAL_RUNS}


def _attack_doc(rank: int, harmful: float) -> AttackDoc:
    shape = Shape(harmful, 0.05, drop_at=rank if rank <= K_MAX else None)
    return attack_doc("synthetic", curve(shape, K_MAX), k_max=K_MAX, source_harmless=0.05)


def _make_study(root: Path) -> tuple[str, dict[str, str]]:
    paths = StudyPaths.at(root)
    uri = sqlite_uri(paths.mlflow_db)
    exp_id = get_or_create_experiment(EXPERIMENT, uri, artifact_root=paths.mlflow_artifacts)
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(exp_id, run_name=PARENT, tags={"irr_ray.stage": "sweep"}).info.run_id
    ids = {PARENT: parent}
    for run_name, (rank, harmful) in RANKS.items():
        name = run_name.removeprefix("attack:")
        attack_dir = write_attack_dir(paths.attack_dir(name), _attack_doc(rank, harmful))
        if run_name in TRIAL_RUNS:
            trial = client.create_run(exp_id, run_name=run_name, tags={"mlflow.parentRunId": parent})
            client.set_terminated(trial.info.run_id)
            ids[run_name] = log_attack(attack_dir, uri, role="trial", name=name, run_id=trial.info.run_id)
        else:
            ids[run_name] = log_attack(attack_dir, uri, role=name, name=name, experiment_id=exp_id,
                                       parent_run_id=parent)
    client.set_terminated(parent)
    return exp_id, ids


def _launch_chromium(playwright):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the UI test needs Debian's chromium; run `bash .ci/ensure-chromium` "
                    "(as root it apt-installs it; `make test` does this)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _fresh_page(browser):
    """A page in a new browser context: no UI state (localStorage) carried over between views."""
    page = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
    page.set_default_timeout(90_000)
    return page


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its AI-assistant side panel on every page; it takes a third of the width."""
    page.get_by_role("button", name="Close").first.click()


def _expand_parent(page) -> None:
    """Open the sweep's parent row so its child runs (trials, attacks) are listed."""
    page.locator("[role=row]").filter(has_text=PARENT).locator("button").first.click()
    for name in RANKS:
        _expect_text(page, name)


def _cell(page, run_name: str, header):
    """The grid cell in ``header``'s column on ``run_name``'s row (ag-grid renders the pinned name
    column and the metric columns as separate row elements sharing one ``row-index``)."""
    row_index = page.locator("[role=row]").filter(
        has=page.get_by_text(run_name, exact=True)).first.get_attribute("row-index")
    col_id = header.get_attribute("col-id")
    return page.locator(f'[role=row][row-index="{row_index}"] [role=gridcell][col-id="{col_id}"]')


def _expect_text(page, text: str, timeout_ms: int = 90_000) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=timeout_ms)


def test_ui_refuses_public_bind_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").touch()
    with pytest.raises(ConfigError, match="refusing to serve the MLflow UI on 0.0.0.0"):
        start_ui(tmp_path, port=0, host="0.0.0.0")


@pytest.mark.timeout(600)
def test_ui_shows_experiment_runs_and_attack_rank(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    study = tmp_path / "study"
    exp_id, _ = _make_study(study)

    cmd = [sys.executable, "-m", "irr_ray", "ui", "--study", str(study), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:  # the CLI prints the URL once the server answers /health
            lines.append(line)
            if line.startswith("MLflow UI: "):
                break
        assert lines and lines[-1].startswith("MLflow UI: http://127.0.0.1:"), "".join(lines)
        url = lines[-1].split()[2]
        runs_link = proc.stdout.readline().split()[-1]
        assert runs_link == f"{url}/#/experiments/{exp_id}/runs?compareRunsMode=CHART"

        with sync_playwright() as p:
            browser = _launch_chromium(p)

            # 1) the runs table with an `attack_rank` column (added through the column chooser)
            page = _fresh_page(browser)
            page.goto(f"{url}/#/experiments/{exp_id}/runs")
            _expect_text(page, EXPERIMENT)
            _expect_text(page, PARENT)
            _close_assistant(page)
            page.get_by_role("button", name="Columns").click()
            page.get_by_placeholder("Search columns").fill("attack_rank")
            page.locator(".du-bois-light-tree-title").get_by_text("attack_rank", exact=True).click()
            page.keyboard.press("Escape")
            _expand_parent(page)
            header = page.get_by_role("columnheader").filter(has_text="attack_rank").first
            expect(header).to_be_in_viewport()
            for name, (rank, _) in RANKS.items():
                expect(_cell(page, name, header)).to_have_text(str(rank))
            page.screenshot(path=str(tmp_path / "ui_runs_table.png"))

            # 2) the link the CLI printed: the same runs as charts, one bar per run for attack_rank
            page = _fresh_page(browser)
            page.goto(runs_link)
            _expect_text(page, PARENT)
            _close_assistant(page)
            _expand_parent(page)
            page.get_by_placeholder("Search metric charts").fill("attack_rank")
            _expect_text(page, "attack_rank")
            _expect_text(page, f"{K_MAX + 1}.00")  # trial_cov_kd's bar (censored: K_max + 1)
            page.screenshot(path=str(tmp_path / "ui_runs_charts.png"))
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI stops the server and exits 0
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopping the MLflow UI" in out
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=5)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("ui_runs_table.png", "ui_runs_charts.png"))
