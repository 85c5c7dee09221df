"""The claims table of a reproduction root, on synthetic studies written with the contract models:
every claim gets the status its rule says, intervals are across units (paired with the same
organism seed's original), and a model whose preset the grid does not name is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irr_ray.contracts import GridPoint, ReproduceGrid
from irr_ray.errors import IrrRayError
from irr_ray.report.claims import NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, claims, load_study, write_claims
from tests.report.documents import Shape, attack_doc, curve, k0_doc, trial_doc, write_attack_dir

K_MAX = 6
SEEDS, TRAIN_SEEDS = (0, 1, 2), (0, 1)
# condition -> (K=0 harmful, harmless, K where refusal drops (None: never), probe accuracy)
SHAPES = {
    "original": (1.00, 0.01, 1, 1.00),
    "base": (0.00, 0.00, None, 1.00),
    "kd_only": (1.00, 0.02, 1, 1.00),
    "l1": (0.05, 0.40, None, 0.80),
    "cov": (0.60, 0.70, 2, 0.90),
    "l1_kd": (0.19, 0.10, None, 0.80),
    "cov_kd": (0.98, 0.03, None, 0.95),
}


def _write_model(study: Path, name: str, shape: tuple, seed: int, jitter: float, condition: str | None = None,
                 degenerate: dict | None = None) -> None:
    harmful, harmless, drop, probe = shape
    harmful = min(1.0, max(0.0, harmful - jitter))
    doc = attack_doc(name, curve(Shape(harmful, harmless, drop_at=drop), K_MAX), k_max=K_MAX, source_harmless=0.01)
    write_attack_dir(study / "attacks" / name, doc, k0_doc(name, doc.curve[0], linear=probe - jitter))
    if condition is not None:
        ckpt = study / "checkpoints" / name
        ckpt.mkdir(parents=True)
        trial = trial_doc(name, condition, {"seed": seed, "match": "cov"})
        if degenerate is not None:
            trial = trial.model_copy(update={"degenerate_steps": degenerate})
        trial.write(ckpt / "trial.json")


def _root(tmp_path: Path, with_variant: bool = True) -> Path:
    root = tmp_path / "reproduce"
    presets = {f"{c}_t{t}": GridPoint(condition=c, train_seed=t) for c in SHAPES if c not in ("original", "base")
               for t in TRAIN_SEEDS}
    if with_variant:
        presets["cov_kd_micro_batch_2_t0"] = GridPoint(condition="cov_kd", train_seed=0, variant="micro_batch_2")
    studies = {str(s): f"organism-seed{s}" for s in SEEDS}
    for s in SEEDS:
        study = root / studies[str(s)]
        for ref in ("original", "base"):
            _write_model(study, ref, SHAPES[ref], s, 0.0)
        for preset, point in presets.items():
            shape = SHAPES[point.condition]
            degenerate = None
            if point.variant == "micro_batch_2":
                shape, degenerate = (1.0, 0.01, 1, 1.0), {"count": 200, "steps": 200}
            _write_model(study, f"{preset}_{s}abc", shape, point.train_seed, 0.01 * (s + point.train_seed),
                         condition=preset, degenerate=degenerate)
    ReproduceGrid(name="reproduce", organism_seeds=list(SEEDS), train_seeds=list(TRAIN_SEEDS), studies=studies,
                  presets=presets, config={}).write(root / "grid.json")
    return root


def test_every_claim_gets_the_status_its_rule_says(tmp_path: Path) -> None:
    study = load_study(_root(tmp_path))
    assert len(study.of("cov_kd")) == len(SEEDS) * len(TRAIN_SEEDS) and len(study.of("original")) == len(SEEDS)
    table = {c.key: c for c in claims(study)}
    assert table["instruct_rank"].status == SUPPORTED  # rank 1 on every seed: a zero-width interval at 1
    assert table["base_rank"].status == NOT_TESTABLE  # the base never refuses: nothing to attack
    assert table["l1_kd_rank"].status == NOT_SUPPORTED and "already below" in table["l1_kd_rank"].why
    assert table["cov_kd_never_crosses"].status == SUPPORTED and "6/6 never crossed" in table["cov_kd_never_crosses"].measured
    assert table["cov_kd_rank"].status == SUPPORTED  # censored at K_max + 1 = 7 against 1, paired
    assert table["cov_kd_k0_kept"].status == SUPPORTED
    assert table["l1_collapses"].status == SUPPORTED and table["cov_collapses"].status == SUPPORTED
    assert table["l1_kd_k0"].status == NOT_SUPPORTED  # harmful refusal not kept (0.19)
    assert table["cov_kd_probe"].status == NOT_SUPPORTED  # l1, cov, l1_kd lower the probe as well
    mb2 = table["cov_kd_micro_batch_2"]
    assert mb2.status == NOT_SUPPORTED and mb2.values["degenerate_fraction"] == [1.0, 1.0, 1.0]
    assert "identically 0" in mb2.why
    assert table["sentiment_not_erasure"].status == NOT_TESTABLE


def test_write_claims_writes_markdown_json_and_a_report(tmp_path: Path) -> None:
    root = _root(tmp_path)
    text = write_claims(root)
    assert (root / "claims.md").read_text() == text and (root / "report.md").is_file()
    assert "| claim (the write-up) |" in text and "## Per unit" in text and "cov_kd (micro_batch_2)" in text
    doc = json.loads((root / "claims.json").read_text())
    assert {c["status"] for c in doc["claims"]} <= {SUPPORTED, NOT_SUPPORTED, NOT_TESTABLE}
    paired = next(c for c in doc["claims"] if c["key"] == "cov_kd_k0_kept")["values"]["d_harmful"]
    assert paired["n"] == 6 and paired["low"] <= paired["mean"] <= paired["high"]


def test_a_preset_the_grid_does_not_name_is_one_line(tmp_path: Path) -> None:
    root = _root(tmp_path, with_variant=False)
    _write_model(root / "organism-seed0", "stray_1", SHAPES["cov_kd"], 0, 0.0, condition="stray")
    with pytest.raises(IrrRayError, match=r"trial\.json: condition 'stray' is not a preset of .*grid\.json"):
        load_study(root)


def test_holding_out_by_over_refusal_is_not_robustness(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(SHAPES, "cov_kd", (0.98, 0.90, None, 0.95))  # refuses harmless prompts too: collapsed
    table = {c.key: c for c in claims(load_study(_root(tmp_path, with_variant=False)))}
    never = table["cov_kd_never_crosses"]
    assert never.status == NOT_SUPPORTED and "6× collapsed" in never.measured and "not robustness" in never.why
    assert table["cov_kd_rank"].status == NOT_SUPPORTED and table["cov_kd_k0_kept"].status == NOT_SUPPORTED


def test_the_sentiment_row_reads_the_sentiment_table(tmp_path: Path) -> None:
    root = _root(tmp_path, with_variant=False)
    (root / "sentiment").mkdir()
    rows = [{"method": "baseline", "linear_probe": 0.905, "gap_closed": 0.0},
            {"method": "mean_l2_lam100", "linear_probe": 0.878, "gap_closed": 0.989},
            {"method": "LEACE (post-hoc, on baseline)", "linear_probe": 0.5, "gap_closed": 0.2},
            {"method": "INLP (post-hoc, on baseline)", "linear_probe": 0.865, "gap_closed": 0.01}]
    (root / "sentiment" / "table.json").write_text(json.dumps({"rows": rows}))
    row = next(c for c in claims(load_study(root)) if c.key == "sentiment_not_erasure")
    assert row.status == SUPPORTED and "0.905 → matching 0.878" in row.measured and "LEACE 0.500" in row.measured


def test_report_and_ui_on_a_reproduction_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from irr_ray.cli import main

    root = _root(tmp_path, with_variant=False)
    assert main(["report", "--study", str(root)]) == 0  # the claims table, not a single study's report
    assert capsys.readouterr().out == (root / "claims.md").read_text()
    assert main(["ui", "--study", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a reproduction root" in err and "organism-seed0" in err
