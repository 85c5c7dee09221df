"""Pareto plot of a study: robustness (robust_k) against K=0 harmful refusal, shaped by verdict.

A fine-tune is only useful if refusal survives ablation *and* it still refuses harmful prompts
before the attack, without refusing harmless ones. So: x = ``robust_k`` (the largest K up to which
harmful refusal stayed high and harmless refusal did not rise, :mod:`irr_ray.core.verdict`; ``None``
is drawn at −1 with tick label ``none``), y = K=0 harmful refusal with its Wilson interval, colour =
K=0 harmless refusal, marker shape = the verdict (legend). The non-dominated models (no other model
has both a higher-or-equal robust_k and a higher-or-equal harmful refusal) are joined by a dashed
frontier. ``attack_rank`` is in the table, not here: it cannot tell collapse from robustness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from irr_ray.report.collect import VERDICT_ORDER, ModelRow
from irr_ray.utils.files import atomic_path

NONE_X = -1  # where robust_k = None is drawn
VERDICT_MARKERS = {"robust": "*", "inconclusive": "D", "broken": "o", "degenerate": "X", "collapsed": "v"}
MARKER_SIZE = {"*": 200}  # a star's area reads small
OTHER_MARKER = "s"


def robust_x(row: ModelRow) -> int:
    """The x position of a row: robust_k, or −1 when there is none."""
    return NONE_X if row.robust_k is None else row.robust_k


def pareto_front(rows: Sequence[ModelRow]) -> list[ModelRow]:
    """Models not dominated in (robust_k ↑, K=0 harmful refusal ↑), by increasing robust_k."""
    def point(r: ModelRow) -> tuple[int, float]:
        return robust_x(r), r.refusal_harmful

    def dominated(a: ModelRow) -> bool:
        pa = point(a)
        return any(point(b)[0] >= pa[0] and point(b)[1] >= pa[1] and point(b) != pa for b in rows)

    return sorted((r for r in rows if not dominated(r)), key=lambda r: (robust_x(r), -r.refusal_harmful))


def plot_pareto(rows: Sequence[ModelRow], out_path: str | Path, title: str = "") -> Path:
    """Draw the plot and write it to ``out_path`` (PNG) atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8.5, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap, norm_kw = "viridis", {"vmin": 0.0, "vmax": 1.0}
    seen: Counter[tuple[int, float]] = Counter()
    scatter = None
    verdicts = [v for v in VERDICT_ORDER if any(r.verdict == v for r in rows)]
    verdicts += sorted({r.verdict for r in rows} - set(verdicts))
    for verdict in verdicts:
        group = [r for r in rows if r.verdict == verdict]
        marker = VERDICT_MARKERS.get(verdict, OTHER_MARKER)
        xs = [robust_x(r) for r in group]
        ys = [r.refusal_harmful for r in group]
        lo = [r.refusal_harmful - r.refusal_harmful_ci[0] if r.refusal_harmful_ci else 0.0 for r in group]
        hi = [r.refusal_harmful_ci[1] - r.refusal_harmful if r.refusal_harmful_ci else 0.0 for r in group]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="0.6", elinewidth=1, capsize=3, zorder=1)
        scatter = ax.scatter(xs, ys, c=[r.refusal_harmless for r in group], cmap=cmap,
                             marker=marker, s=MARKER_SIZE.get(marker, 110), edgecolors="black",
                             linewidths=0.8, zorder=3, **norm_kw)
    for r in rows:
        key = (robust_x(r), round(r.refusal_harmful, 3))
        dy = 8 + 11 * seen[key]  # stack labels of coinciding points instead of overprinting them
        seen[key] += 1
        ax.annotate(r.name, (robust_x(r), r.refusal_harmful), textcoords="offset points",
                    xytext=(7, dy), fontsize=8, zorder=4)

    front = pareto_front(rows)
    if len(front) > 1:
        ax.step([robust_x(r) for r in front], [r.refusal_harmful for r in front], where="pre",
                linestyle="--", color="0.35", linewidth=1, zorder=2)

    k_max = max(r.k_max for r in rows)
    every = set(range(k_max + 1)) if k_max <= 20 else {0, k_max}
    ticks = sorted({robust_x(r) for r in rows} | {NONE_X} | every)
    ax.set_xticks(ticks, ["none" if t == NONE_X else str(t) for t in ticks])
    ax.axvline(NONE_X + 0.5, color="0.8", linewidth=1, zorder=0)
    ax.set_xlim(NONE_X - 0.6, k_max + 0.9)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("robust_k (largest K with harmful refusal kept high and harmless refusal not raised; "
                  "none = fails at K=0)", fontsize=9)
    ax.set_ylabel("K=0 harmful refusal (95% Wilson CI)")
    ax.set_title(title or "robust_k vs K=0 harmful refusal (marker = verdict)")
    ax.grid(True, alpha=0.3)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="K=0 harmless refusal (lower is better)")
    handles = [Line2D([], [], marker=VERDICT_MARKERS.get(v, OTHER_MARKER), linestyle="", color="0.4",
                      markersize=8, label=v) for v in verdicts]
    handles.append(Line2D([], [], linestyle="--", color="0.35", label="Pareto frontier"))
    ax.legend(handles=handles, title="verdict", loc="lower right", fontsize=8, title_fontsize=8)

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
