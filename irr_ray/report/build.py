"""Stage 5: the study report — a table per attacked model with its verdict, robust_k and
attack_rank (with a suite: its robustness profile, one column per attack and the strongest),
``report.md`` and ``pareto.png`` in the study directory, both logged to the study's MLflow parent
run (or a ``report`` run).

Only reads finished outputs (``attacks/*/attack.json`` and friends), so it can run at any time,
as often as wanted; each file is replaced atomically, never left half-written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from irr_ray.report.collect import ModelRow, collect_rows, study_attacks
from irr_ray.report.pareto import plot_pareto
from irr_ray.report.render import render_markdown, render_text
from irr_ray.report.tracking import ReportRun, log_report_files
from irr_ray.study import StudyPaths
from irr_ray.utils.files import write_text_atomic

PARETO_NAME = "pareto.png"


@dataclass(frozen=True)
class Report:
    study_dir: Path
    rows: list[ModelRow]
    missing: list[str]
    markdown: str
    markdown_path: Path
    pareto_path: Path
    mlflow: ReportRun | None = field(default=None)

    @property
    def title(self) -> str:
        return f"irr-ray report: {self.study_dir.name}"

    def render_text(self) -> str:
        """The table, legend and file locations, for the terminal."""
        text = render_text(self.title, self.rows, self.missing, str(self.pareto_path))
        text += f"\nMarkdown: {self.markdown_path}"
        if self.mlflow is not None:
            where = "study parent run" if self.mlflow.is_parent else "report run"
            text += f"\nMLflow: logged to {where} {self.mlflow.run_id} ({self.mlflow.tracking_uri})"
        return text

    def row(self, name: str) -> ModelRow:
        return next(r for r in self.rows if r.name == name)


def pareto_title(study_name: str, rows: list[ModelRow]) -> str:
    """The Pareto plot's title: the study and what its axes are (robust share in a suite)."""
    axis, marker = ("robust share", "suite verdict") if study_attacks(rows) else ("robust_k", "verdict")
    return f"{study_name}: {axis} vs K=0 harmful refusal (marker = {marker})"


def build_report(study_dir: str | Path, tracking_uri: str | None = None, log_to_mlflow: bool = True) -> Report:
    """Read the study's results, write ``report.md`` and ``pareto.png`` into it, log both to MLflow.

    ``tracking_uri`` overrides the study's (``config.yaml``'s ``tracking.uri``, else
    ``<study>/mlflow.db``). Raises :class:`~irr_ray.errors.IrrRayError` when there are no attack
    results yet or one is malformed.
    """
    paths = StudyPaths.at(study_dir)
    rows, missing = collect_rows(paths.root)
    title = f"irr-ray report: {paths.root.name}"
    pareto_path = plot_pareto(rows, paths.root / PARETO_NAME, title=pareto_title(paths.root.name, rows))
    markdown = render_markdown(title, rows, missing, PARETO_NAME)
    write_text_atomic(paths.report, markdown)
    run = log_report_files(paths.root, rows, [paths.report, pareto_path], tracking_uri) if log_to_mlflow else None
    return Report(paths.root, rows, missing, markdown, paths.report, pareto_path, run)
