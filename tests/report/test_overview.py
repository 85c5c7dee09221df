"""The study overview without a browser: its page from a study's contract documents and a real
MLflow SQLite database, and its server in-process (routes, a Pareto plot drawn when the study has
none — never written into the study —, the Host-header check). The first screen as a user sees it
is tested in headless Chromium by ``tests/e2e/test_ui.py``."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pytest

from irr_ray.report.html import overview_page, report_page
from irr_ray.report.overview import load_overview
from irr_ray.study import StudyPaths
from irr_ray.tracking.attack_logging import log_attack
from irr_ray.tracking.mlflow_utils import get_or_create_experiment, sqlite_uri
from irr_ray.tracking.overview_server import OverviewServer, host_allowed
from tests.report.documents import Shape, attack_doc, curve, trial_doc, write_attack_dir

K_MAX = 4
MLFLOW_URL = "http://127.0.0.1:5999"
# name -> (dim's curve, trial condition or None); the original's attack is logged to MLflow, the
# trial has its own run (trial.json), the base model has no run at all
MODELS = {"original": (Shape(0.95, 0.02, drop_at=2), None), "base": (Shape(0.10, 0.02), None),
          "trial_cov": (Shape(0.90, 0.04), "cov_kd")}


def _study(root: Path) -> dict[str, str]:
    paths = StudyPaths.at(root)
    uri = sqlite_uri(paths.mlflow_db)
    exp_id = get_or_create_experiment("overview", uri, artifact_root=paths.mlflow_artifacts)
    client = mlflow.MlflowClient(uri)
    runs = {"experiment": exp_id}
    for name, (shape, condition) in MODELS.items():
        write_attack_dir(paths.attack_dir(name), attack_doc(name, curve(shape, K_MAX), k_max=K_MAX,
                                                            source_harmless=0.02))
        if condition is not None:
            runs[name] = client.create_run(exp_id, run_name=name).info.run_id
            trial_doc(name, condition, {"match": "cov", "lambda_cov": 3.0, "kd_T": 2.0, "kd_lambda": 1.0},
                      runs[name]).write(paths.checkpoint_dir(name) / "trial.json")
        elif name == "original":
            runs[name] = log_attack(paths.attack_dir(name), uri, role=name, name=name, experiment_id=exp_id)
    return runs


def _get(url: str, host: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One study for the module (read only: the server test checks that nothing is written)."""
    root = tmp_path_factory.mktemp("overview") / "study"
    return root, _study(root)


def test_overview_page_has_every_model_its_columns_chart_point_and_run_link(study) -> None:
    root, runs = study
    ov = load_overview(root, MLFLOW_URL)
    page = overview_page(ov)

    rows = dict(re.findall(r'<tr class="\w+" data-model="([^"]+)">(.*?)</tr>', page))
    assert list(rows) == ["original", "base", "trial_cov"]  # reference models first, as the report
    cells = {name: re.sub(r"<[^>]+>", "", row).strip() for name, row in rows.items()}
    original = re.findall(r"<td[^>]*>(.*?)</td>", rows["original"])
    assert [re.sub(r"<[^>]+>", "", c) for c in original[2:6]] == ["broken", "dim (broken@2)", "1", "2"]
    assert original[6].startswith("0.95 ")
    assert "robust" in cells["trial_cov"] and f"&gt; {K_MAX}" in rows["trial_cov"]
    points = re.findall(r'<g class="point" data-model="([^"]+)" data-verdict="(\w+)" data-x="([^"]+)" '
                        r'data-y="([^"]+)"', page)
    assert points == [("original", "broken", "1", "0.95"), ("base", "broken", "none", "0.1"),
                      ("trial_cov", "robust", str(K_MAX), "0.9")]
    exp = runs["experiment"]
    for name in ("original", "trial_cov"):
        assert f'href="{MLFLOW_URL}/#/experiments/{exp}/runs/{runs[name]}"' in rows[name]
    assert "href" not in rows["base"]  # no run recorded: no link rather than a broken one
    assert f'href="{MLFLOW_URL}/#/experiments/{exp}/runs"' in page
    assert "<script" not in page and "http" not in page.replace(MLFLOW_URL, "").replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched from the network

    report = report_page(ov)
    assert "dim (broken@2)" not in report and "broken (K=2)" in report  # report.md's own cells
    assert '<img id="pareto" src="/pareto.png"' in report


def test_server_routes_draw_a_missing_pareto_plot_outside_the_study(study) -> None:
    study, _ = study
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    server = OverviewServer(study, MLFLOW_URL, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        status, kind, body = _get(url + "/")
        assert status == 200 and kind.startswith("text/html") and b'id="robustness-chart"' in body
        assert _get(url + "/report")[0] == 200
        status, kind, body = _get(url + "/pareto.png")
        assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG")
        status, _, body = _get(url + "/report.md")
        assert status == 404 and b"irr-ray report --study" in body
        assert _get(url + "/nothing")[0] == 404
        assert _get(url + "/", host="attacker.example")[0] == 403  # DNS rebinding
        assert _get(url + "/health", host=f"localhost:{server.port}")[0] == 200
    finally:
        server.stop()
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before  # nothing written into the study
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=5)


def test_host_header_check() -> None:
    assert host_allowed("127.0.0.1:5000") and host_allowed("localhost") and host_allowed("[::1]:5000")
    assert host_allowed("192.168.1.4:5000") and host_allowed("mlflow.lab:80", frozenset({"mlflow.lab"}))
    assert not host_allowed("attacker.example") and not host_allowed("")
