"""Stage 5: report table + Pareto plot of a study (``irr-ray report --study DIR``)."""

from irr_ray.report.build import Report, build_report
from irr_ray.report.collect import ModelRow, collect_rows
from irr_ray.report.pareto import pareto_front, plot_pareto

__all__ = ["ModelRow", "Report", "build_report", "collect_rows", "pareto_front", "plot_pareto"]
