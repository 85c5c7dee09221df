"""Pareto plot of a study: robustness against K=0 harmful refusal, shaped by verdict.

A fine-tune is only useful if refusal survives the attack *and* it still refuses harmful prompts
before the attack, without refusing harmless ones. So: y = K=0 harmful refusal with its Wilson
interval, colour = K=0 harmless refusal, marker shape = the verdict (legend; the suite's combined
verdict when the study has a suite), x = robustness:

* **dim only** (as before the suite): x = ``robust_k`` (the largest K up to which harmful refusal
  stayed high and harmless refusal did not rise, :mod:`irr_ray.core.verdict`; ``None`` is drawn at
  −1 with tick label ``none``).
* **a suite** (some model has a result of an attack other than ``dim``): the attacks count
  different things (directions, cone dimension, trials, steps), so each attack's robust_k is read
  as a share of its own largest budget, and x = :func:`robust_share` = the **smallest** of these
  shares over the model's attacks: the fraction of budget the model withstood against the attack
  that got furthest soonest. It is 1 only when every attack left refusal high through its whole
  budget; a model that some attack broke at its first budget has robust_k 0 for that attack and
  sits at x = 0 whatever the other attacks found; ``none`` (K=0 already fails, drawn left of 0)
  when any attack's K=0 row fails the rule. Shares use the budget's value (robust_k 25 of 100 trials
  = 0.25), not its position in the schedule. robust_k's rule (harmful refusal ≥ 0.70, harmless not
  raised) is stricter than "not broken", so a robust model can sit below 1; a row whose suite has
  not finished is placed by the attacks that have (its verdict reads ``robust*`` in the table).

The non-dominated models (no other model has both a higher-or-equal x and a higher-or-equal harmful
refusal) are joined by a dashed frontier. ``attack_rank`` is in the table, not here: it cannot tell
collapse from robustness.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from irr_ray.report.collect import VERDICT_ORDER, ModelRow, study_attacks
from irr_ray.utils.files import atomic_path

NONE_X = -1  # where robust_k = None is drawn
SUITE_NONE_X = -0.15  # where a robust share of None is drawn (suite)
SUITE_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
VERDICT_MARKERS = {"robust": "*", "inconclusive": "D", "broken": "o", "degenerate": "X", "collapsed": "v"}
MARKER_SIZE = {"*": 200}  # a star's area reads small
OTHER_MARKER = "s"


def robust_x(row: ModelRow) -> int:
    """The x position of a row: robust_k, or −1 when there is none."""
    return NONE_X if row.robust_k is None else row.robust_k


def robust_share(row: ModelRow) -> float | None:
    """The suite's robustness axis (module docstring): min over the model's attacks of robust_k /
    largest budget; None when some attack's K=0 row already fails the rule."""
    shares = [a.robust_share for a in row.attacks if a.has_curve]
    if not shares:  # no curve at hand: dim's own numbers
        shares = [None if row.robust_k is None else row.robust_k / max(1, row.k_max)]
    return None if any(x is None for x in shares) else min(x for x in shares if x is not None)


def robustness(row: ModelRow, suite: bool) -> float:
    """The x position of a row: robust_k (dim only) or the robust share (suite), ``none`` left of 0."""
    if not suite:
        return robust_x(row)
    share = robust_share(row)
    return SUITE_NONE_X if share is None else share


def pareto_front(rows: Sequence[ModelRow]) -> list[ModelRow]:
    """Models not dominated in (robustness ↑, K=0 harmful refusal ↑), by increasing robustness
    (robust_k, or the robust share when the study has a suite)."""
    suite = bool(study_attacks(list(rows)))

    def x(r: ModelRow) -> float:
        return robustness(r, suite)

    def point(r: ModelRow) -> tuple[float, float]:
        return x(r), r.refusal_harmful

    def dominated(a: ModelRow) -> bool:
        pa = point(a)
        return any(point(b)[0] >= pa[0] and point(b)[1] >= pa[1] and point(b) != pa for b in rows)

    return sorted((r for r in rows if not dominated(r)), key=lambda r: (x(r), -r.refusal_harmful))


def axis_label(rows: Sequence[ModelRow]) -> str:
    """What x means for these rows (``robust_k`` or the suite's robust share)."""
    if study_attacks(list(rows)):
        return ("robust share of budget (min over attacks of robust_k / largest budget; "
                "none = fails at K=0)")
    return ("robust_k (largest K with harmful refusal kept high and harmless refusal not raised; "
            "none = fails at K=0)")


def plot_pareto(rows: Sequence[ModelRow], out_path: str | Path, title: str = "") -> Path:
    """Draw the plot and write it to ``out_path`` (PNG) atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8.5, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap, norm_kw = "viridis", {"vmin": 0.0, "vmax": 1.0}
    suite = bool(study_attacks(list(rows)))

    def rx(r: ModelRow) -> float:
        return robustness(r, suite)

    seen: Counter[tuple[float, float]] = Counter()
    scatter = None
    verdicts = [v for v in VERDICT_ORDER if any(r.verdict == v for r in rows)]
    verdicts += sorted({r.verdict for r in rows} - set(verdicts))
    for verdict in verdicts:
        group = [r for r in rows if r.verdict == verdict]
        marker = VERDICT_MARKERS.get(verdict, OTHER_MARKER)
        xs = [rx(r) for r in group]
        ys = [r.refusal_harmful for r in group]
        lo = [r.refusal_harmful - r.refusal_harmful_ci[0] if r.refusal_harmful_ci else 0.0 for r in group]
        hi = [r.refusal_harmful_ci[1] - r.refusal_harmful if r.refusal_harmful_ci else 0.0 for r in group]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="0.6", elinewidth=1, capsize=3, zorder=1)
        scatter = ax.scatter(xs, ys, c=[r.refusal_harmless for r in group], cmap=cmap,
                             marker=marker, s=MARKER_SIZE.get(marker, 110), edgecolors="black",
                             linewidths=0.8, zorder=3, **norm_kw)
    for r in rows:
        key = (rx(r), round(r.refusal_harmful, 3))
        dy = 8 + 11 * seen[key]  # stack labels of coinciding points instead of overprinting them
        seen[key] += 1
        ax.annotate(r.name, (rx(r), r.refusal_harmful), textcoords="offset points",
                    xytext=(7, dy), fontsize=8, zorder=4)

    front = pareto_front(rows)
    if len(front) > 1:
        ax.step([rx(r) for r in front], [r.refusal_harmful for r in front], where="pre",
                linestyle="--", color="0.35", linewidth=1, zorder=2)

    if suite:
        ticks = [SUITE_NONE_X, *SUITE_TICKS]
        ax.set_xticks(ticks, ["none" if t == SUITE_NONE_X else f"{t:g}" for t in ticks])
        ax.axvline(SUITE_NONE_X / 2, color="0.8", linewidth=1, zorder=0)
        ax.set_xlim(SUITE_NONE_X - 0.08, 1.15)
    else:
        k_max = max(r.k_max for r in rows)
        every = set(range(k_max + 1)) if k_max <= 20 else {0, k_max}
        ticks = sorted({robust_x(r) for r in rows} | {NONE_X} | every)
        ax.set_xticks(ticks, ["none" if t == NONE_X else str(t) for t in ticks])
        ax.axvline(NONE_X + 0.5, color="0.8", linewidth=1, zorder=0)
        ax.set_xlim(NONE_X - 0.6, k_max + 0.9)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel(axis_label(rows), fontsize=9)
    ax.set_ylabel("K=0 harmful refusal (95% Wilson CI)")
    ax.set_title(title or f"{'robust share' if suite else 'robust_k'} vs K=0 harmful refusal (marker = verdict)")
    ax.grid(True, alpha=0.3)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="K=0 harmless refusal (lower is better)")
    handles = [Line2D([], [], marker=VERDICT_MARKERS.get(v, OTHER_MARKER), linestyle="", color="0.4",
                      markersize=8, label=v) for v in verdicts]
    handles.append(Line2D([], [], linestyle="--", color="0.35", label="Pareto frontier"))
    ax.legend(handles=handles, title="suite verdict" if suite else "verdict", loc="lower right", fontsize=8,
              title_fontsize=8)

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    return out_path
