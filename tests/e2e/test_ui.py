"""`irr-ray ui` end to end: the real CLI (a subprocess) on a study directory as `irr-ray run` leaves
it (:mod:`tests.e2e.ui_study`: contract documents, a real MLflow SQLite database, the report
stage's report.md and pareto.png), opened in headless Chromium (Debian's, never a downloaded one).

The first screen is asserted as a newcomer sees it, without a click, on a laptop-sized viewport:
every model of the study with its verdict, strongest attack, robust_k, attack_rank and K=0 refusal,
its link to its MLflow run, and the chart of robustness against K=0 harmful refusal with one point
per model; nothing is requested from anywhere but the overview itself. Then one click each reaches
the report (its Pareto plot loaded), the Pareto plot (the study's file, byte for byte) and a model's
run in the MLflow UI. The first screen's screenshot is kept under the test's tmp_path and copied to
``$IRR_RAY_TEST_ARTIFACTS`` (default ``tests/artifacts/``, ignored by git); the test prints where.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from irr_ray.errors import ConfigError
from irr_ray.tracking.ui import start_ui
from tests.e2e.ui_study import EXPERIMENT, K_MAX, make_study

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1440, "height": 900}
HEADERS = ["model", "condition", "verdict", "strongest attack", "robust_k", "attack_rank", "K=0 harmful refusal",
           "K=0 harmless refusal", "robust share"]


@dataclass(frozen=True)
class Expected:
    """What the first screen must say about one model (the real rules on ui_study's curves)."""

    verdict: str
    strongest: str
    robust_k: str
    attack_rank: str
    harmful: str  # K=0 harmful refusal, as the table and the chart's data-y show it
    share: str  # the chart's x: the robust share of budget ("none": fails at K=0)


CENSORED = f"> {K_MAX}"
# in the order the overview lists them: reference models, then trials most trustworthy first
EXPECTED = {
    "original": Expected("broken", "dim (broken@1)", "0", "1", "0.99", "0"),
    "base": Expected("broken", "dim (broken@0)", "none", "0", "0", "none"),
    "random_ablation_f816f815": Expected("robust*", "dim (robust)", str(K_MAX), CENSORED, "1", "1"),
    "cov_robust_1f2e3d4c": Expected("robust", "dim (robust)", str(K_MAX), CENSORED, "0.96", "1"),
    "refat_d0c10215": Expected("broken", "finetune (broken@25)", str(K_MAX), CENSORED, "0.97", "0.2"),
    "refat_529ee0dc": Expected("broken", "finetune (broken@10)", "2", "3", "0.97", "0"),
    "cov_kd_d43af9bc": Expected("broken", "dim (broken@1)", "0", "1", "1", "0"),
    "kd_only_893e6d03": Expected("broken", "rdo (broken@1)", "0", "1", "1", "0"),
    "l1_kd_462624df": Expected("broken", "dim (broken@0)", "none", "0", "0.19", "none"),
    "l1_0e050d0f": Expected("broken", "dim (broken@0)", "none", "0", "0.03", "none"),
}


def artifacts_dir() -> Path:
    """Where screenshots are kept after the test's tmp_path is gone."""
    out = Path(os.environ.get("IRR_RAY_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _launch_chromium(playwright):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the UI test needs Debian's chromium; run `bash .ci/ensure-chromium` "
                    "(as root it apt-installs it; `make test` does this)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def _read_urls(proc: subprocess.Popen) -> tuple[str, str, list[str]]:
    """(overview URL, MLflow URL, lines) from what the CLI prints once both servers answer."""
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("MLflow UI: "):
            lines.append(proc.stdout.readline())  # "  runs of <experiment>: <link>"
            break
    overview = next((ln.split()[2] for ln in lines if ln.startswith("Study overview: ")), None)
    mlflow_url = next((ln.split()[2] for ln in lines if ln.startswith("MLflow UI: ")), None)
    assert overview and mlflow_url, "".join(lines)
    return overview, mlflow_url, lines


def test_ui_refuses_public_bind_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").touch()
    with pytest.raises(ConfigError, match="refusing to serve the MLflow UI on 0.0.0.0"):
        start_ui(tmp_path, port=0, host="0.0.0.0")


@pytest.mark.timeout(600)
def test_first_screen_answers_the_study(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    study = tmp_path / "organism"
    run_ids = make_study(study)

    cmd = [sys.executable, "-m", "irr_ray", "ui", "--study", str(study), "--port", "0", "--mlflow-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        overview, mlflow_url, lines = _read_urls(proc)
        assert overview.startswith("http://127.0.0.1:") and mlflow_url.startswith("http://127.0.0.1:"), lines
        assert lines[-1].strip().startswith(f"runs of {EXPERIMENT}: {mlflow_url}/#/experiments/"), lines

        with sync_playwright() as p:
            browser = _launch_chromium(p)
            page = browser.new_context(viewport=LAPTOP).new_page()
            page.set_default_timeout(90_000)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(overview)

            # --- the first screen, no click: every model, its columns, its run, and the chart
            expect(page.locator("h1")).to_have_text("irr-ray study: organism")
            expect(page.locator("#models th")).to_have_text(HEADERS)
            rows = page.locator("#models tbody tr")
            expect(rows).to_have_count(len(EXPECTED))
            points = page.locator("#robustness-chart g.point")
            expect(points).to_have_count(len(EXPECTED))
            experiment = None
            for i, (name, want) in enumerate(EXPECTED.items()):
                row = rows.nth(i)
                expect(row).to_have_attribute("data-model", name)
                expect(row).to_be_in_viewport(ratio=1)
                cells = row.locator("td")
                expect(cells.nth(0)).to_have_text(name)
                expect(cells.nth(2)).to_have_text(want.verdict)
                expect(cells.nth(3)).to_have_text(want.strongest)
                expect(cells.nth(4)).to_have_text(want.robust_k)
                expect(cells.nth(5)).to_have_text(want.attack_rank)
                expect(cells.nth(6)).to_contain_text(f"{float(want.harmful):.2f} [")
                expect(cells.nth(8)).to_have_text(want.share if want.share == "none" else f"{float(want.share):.2f}")
                href = cells.nth(0).locator("a").get_attribute("href")
                assert href.startswith(f"{mlflow_url}/#/experiments/") and href.endswith(f"/runs/{run_ids[name]}")
                experiment = experiment or href.split("/")[-3]
                point = page.locator(f'#robustness-chart g.point[data-model="{name}"]')
                expect(point).to_have_attribute("data-x", want.share)
                expect(point).to_have_attribute("data-y", want.harmful)
                expect(point.locator("circle")).to_be_in_viewport(ratio=0.99)  # sub-pixel edges
                expect(point.locator("text.label")).to_have_text(name)
            expect(page.locator("#robustness-chart")).to_be_in_viewport(ratio=0.99)
            for link in ("Report", "Pareto plot"):
                expect(page.get_by_role("link", name=link, exact=True)).to_be_in_viewport(ratio=1)
            assert requested and all(u.startswith(overview) for u in requested), requested  # nothing else fetched
            shot = tmp_path / "ui_first_screen.png"
            page.screenshot(path=str(shot))
            kept = artifacts_dir() / shot.name
            shutil.copyfile(shot, kept)
            print(f"\nfirst screen of `irr-ray ui`: {kept}")

            # --- one click: the report, with the Pareto plot loaded
            page.get_by_role("link", name="Report", exact=True).click()
            expect(page.locator("h1")).to_have_text("irr-ray report: organism")
            for column in ("orthogonalize", "rdo", "optuna_abliteration", "finetune", "probes lin / MLP"):
                expect(page.locator("#report th").filter(has_text=column).first).to_be_visible()
            expect(page.locator("#verdicts > li")).to_have_count(len(EXPECTED))
            pareto = page.locator("#pareto")
            pareto.scroll_into_view_if_needed()
            page.wait_for_function("() => document.querySelector('#pareto').naturalWidth > 0")
            page.screenshot(path=str(tmp_path / "ui_report.png"), full_page=True)
            shutil.copyfile(tmp_path / "ui_report.png", artifacts_dir() / "ui_report.png")

            # --- one click: the Pareto plot, the study's own file
            page.goto(overview)
            with page.expect_response(lambda r: r.url.endswith("/pareto.png")) as response:
                page.get_by_role("link", name="Pareto plot", exact=True).click()
            assert response.value.status == 200
            assert response.value.body() == (study / "pareto.png").read_bytes()

            # --- one click: a model's run in the MLflow UI
            page.goto(overview)
            page.locator('#models tr[data-model="original"] a').click()
            page.wait_for_url(f"{mlflow_url}/#/experiments/{experiment}/runs/{run_ids['original']}**")
            expect(page.get_by_text("attack:original").first).to_be_visible(timeout=120_000)
            page.screenshot(path=str(tmp_path / "ui_mlflow_run.png"))
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the CLI stops both servers and exits 0
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + out
    assert "stopping the MLflow UI and the study overview" in out
    for url in (overview, mlflow_url):
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url.rstrip("/") + "/health", timeout=5)
