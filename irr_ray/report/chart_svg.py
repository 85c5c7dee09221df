"""The study overview's chart: robustness against K=0 harmful refusal, one labelled point per model,
as inline SVG.

Why SVG text and not a picture: the overview page must answer on first load with no script and no
network (no CDN charting library), and a test must be able to read the chart as a user sees it —
every point is an element carrying its model's name and coordinates (``data-model``, ``data-x``,
``data-y``) with a ``<title>`` tooltip, and every label is text on the page.

The axes are the Pareto plot's (:mod:`irr_ray.report.pareto`): x = ``robust_k`` for a ``dim``-only
study, the robust share of budget (smallest over the model's attacks) for a suite, ``none`` left of
0; y = K=0 harmful refusal with its 95% Wilson interval. Colour is the verdict (the combined one in a
suite), so a newcomer reads "up and right is better, red is broken" without a legend lookup; the
non-dominated models are joined by the same dashed frontier. K=0 harmless refusal, the Pareto plot's
colour, is in each point's tooltip and in the table.

Labels sit right of their point; labels of points that (nearly) coincide are pushed apart vertically
and joined to their point by a thin leader, so ten models at "broken at the first budget, refusal
≈ 1" stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from irr_ray.report.collect import VERDICT_ORDER, ModelRow, study_attacks
from irr_ray.report.pareto import NONE_X, SUITE_NONE_X, SUITE_TICKS, pareto_front, robust_share, robustness

VERDICT_COLOURS = {"robust": "#1a9850", "inconclusive": "#7b8ea3", "broken": "#d73027",
                   "degenerate": "#f08a24", "collapsed": "#7b3294"}
OTHER_COLOUR = "#444444"
WIDTH, HEIGHT = 620, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 150, 16, 62
LABEL_GAP = 13  # px between stacked labels (font 11px)
CHAR_WIDTH = 6.3  # px per character of a label, a sans-serif 11px average (slightly generous)


@dataclass(frozen=True)
class Axes:
    """Data → pixel mapping of the plot area."""

    x_min: float
    x_max: float
    ticks: tuple[tuple[float, str], ...]
    none_divider: float  # x of the line between "none" and 0

    def px(self, x: float) -> float:
        span = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
        return MARGIN_LEFT + (x - self.x_min) / (self.x_max - self.x_min) * span

    @staticmethod
    def py(y: float) -> float:
        span = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
        return MARGIN_TOP + (1.1 - y) / 1.15 * span  # y from -0.05 to 1.1, as in the Pareto plot


def axes_for(rows: Sequence[ModelRow], suite: bool) -> Axes:
    if suite:
        ticks = ((SUITE_NONE_X, "none"), *((t, f"{t:g}") for t in SUITE_TICKS))
        return Axes(SUITE_NONE_X - 0.08, 1.08, ticks, SUITE_NONE_X / 2)
    k_max = max(r.k_max for r in rows)
    every = set(range(k_max + 1)) if k_max <= 12 else {0, k_max}
    values = sorted({int(robustness(r, False)) for r in rows} | {NONE_X} | every)
    return Axes(NONE_X - 0.6, k_max + 0.6, tuple((t, "none" if t == NONE_X else str(t)) for t in values),
                NONE_X + 0.5)


def x_value(row: ModelRow, suite: bool) -> float | None:
    """A row's robustness as data (``None``: fails at K=0, drawn left of 0)."""
    if suite:
        return robust_share(row)
    return None if row.robust_k is None else float(row.robust_k)


def x_label(suite: bool) -> str:
    return ("robust share of budget (min over attacks; none = fails at K=0)" if suite
            else "robust_k (directions withstood; none = fails at K=0)")


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_positions(points: list[tuple[ModelRow, float, float]]) -> dict[str, float]:
    """Label baseline y (px) per model: beside its point, else the nearest free slot away from the
    plot's nearer edge (down in the upper half, up in the lower half) — greedy, from the edges
    inwards, so the names of coinciding points list in the order of their points."""
    top, bottom = Axes.py(1.1) + 10, Axes.py(-0.05) - 2
    middle = (top + bottom) / 2
    placed = [(x - 7, y - 7, x + 7, y + 7) for _, x, y in points]  # labels never cover a point
    upper = sorted((p for p in points if p[2] < middle), key=lambda p: (p[2], p[1], p[0].name))
    lower = sorted((p for p in points if p[2] >= middle), key=lambda p: (-p[2], p[1], p[0].name))
    out: dict[str, float] = {}
    for row, x, y in upper + lower:
        width = CHAR_WIDTH * len(row.name)
        step = LABEL_GAP if y < middle else -LABEL_GAP
        candidates = [y + 4 + i * step for i in range(40)] + [y + 4 - i * step for i in range(1, 40)]
        candidates = [c for c in candidates if top <= c <= bottom] or [min(max(y + 4, top), bottom)]
        for base in candidates:
            box = (x + 13, base - 10, x + 14 + width, base + 2)
            if not any(_overlaps(box, other) for other in placed):
                break
        out[row.name] = base
        placed.append(box)
    return out


def robustness_chart(rows: Sequence[ModelRow]) -> str:
    """The chart of ``rows`` as one ``<svg>`` element (see module docstring)."""
    suite = bool(study_attacks(list(rows)))
    ax = axes_for(rows, suite)
    y0, y1 = ax.py(-0.05), ax.py(1.1)
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    parts = [f'<svg id="robustness-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(x_label(suite))} vs K=0 harmful '
             'refusal, one point per model" font-family="sans-serif" font-size="11">',
             f'<rect x="{x0}" y="{y1:.1f}" width="{x1 - x0}" height="{y0 - y1:.1f}" fill="#fbfbfb" stroke="#bbb"/>']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = ax.py(t)
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{_fmt(y)}" y2="{_fmt(y)}" stroke="#e4e4e4"/>'
                     f'<text x="{x0 - 6}" y="{_fmt(y + 4)}" text-anchor="end">{t:g}</text>')
    for t, label in ax.ticks:
        x = ax.px(t)
        parts.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(y0)}" y2="{_fmt(y0 + 4)}" stroke="#888"/>'
                     f'<text x="{_fmt(x)}" y="{_fmt(y0 + 16)}" text-anchor="middle">{escape(label)}</text>')
    xd = ax.px(ax.none_divider)
    parts.append(f'<line x1="{_fmt(xd)}" x2="{_fmt(xd)}" y1="{_fmt(y1)}" y2="{_fmt(y0)}" stroke="#ccc"/>')
    parts.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{HEIGHT - 30}" text-anchor="middle" font-size="12">'
                 f'{escape(x_label(suite))}</text>')
    parts.append(f'<text transform="translate(14 {(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 'font-size="12">K=0 harmful refusal (95% CI)</text>')

    front = pareto_front(rows)
    if len(front) > 1:  # a step line, as the Pareto plot's `where="pre"`
        pts = [(ax.px(robustness(front[0], suite)), ax.py(front[0].refusal_harmful))]
        for r in front[1:]:
            x, y = ax.px(robustness(r, suite)), ax.py(r.refusal_harmful)
            pts += [(pts[-1][0], y), (x, y)]
        parts.append('<polyline class="frontier" fill="none" stroke="#555" stroke-dasharray="5 4" points="'
                     + " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in pts) + '"/>')

    points = [(r, ax.px(robustness(r, suite)), ax.py(r.refusal_harmful)) for r in rows]
    labels = _label_positions(points)
    for r, x, y in points:
        colour = VERDICT_COLOURS.get(r.verdict, OTHER_COLOUR)
        xv = x_value(r, suite)
        shown = "none" if xv is None else f"{xv:g}"
        tip = (f"{r.name}: {r.verdict}; x = {shown}; "
               f"K=0 harmful refusal {r.refusal_harmful:.2f}, harmless {r.refusal_harmless:.2f}")
        parts.append(f'<g class="point" data-model="{escape(r.name)}" data-verdict="{escape(r.verdict)}" '
                     f'data-x="{shown}" data-y="{r.refusal_harmful:g}"><title>{escape(tip)}</title>')
        if r.refusal_harmful_ci:
            lo, hi = ax.py(r.refusal_harmful_ci[0]), ax.py(r.refusal_harmful_ci[1])
            parts.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(lo)}" y2="{_fmt(hi)}" stroke="#999"/>')
        parts.append(f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="5.5" fill="{colour}" stroke="#222" '
                     'stroke-width="0.8"/>')
        ly = labels[r.name]
        if abs(ly - (y + 4)) > 1:
            parts.append(f'<line x1="{_fmt(x + 6)}" x2="{_fmt(x + 12)}" y1="{_fmt(y)}" y2="{_fmt(ly - 4)}" '
                         'stroke="#aaa"/>')
        parts.append(f'<text class="label" x="{_fmt(x + 14)}" y="{_fmt(ly)}">{escape(r.name)}</text></g>')

    verdicts = [v for v in VERDICT_ORDER if any(r.verdict == v for r in rows)]
    verdicts += sorted({r.verdict for r in rows} - set(verdicts))
    lx, ly = 16, HEIGHT - 10
    for v in verdicts:
        parts.append(f'<circle cx="{lx}" cy="{ly - 4}" r="5" fill="{VERDICT_COLOURS.get(v, OTHER_COLOUR)}" '
                     f'stroke="#222" stroke-width="0.8"/><text x="{lx + 9}" y="{ly}">{escape(v)}</text>')
        lx += 24 + 7 * len(v)
    if len(front) > 1:
        parts.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly - 4}" y2="{ly - 4}" stroke="#555" '
                     f'stroke-dasharray="5 4"/><text x="{lx + 27}" y="{ly}">Pareto frontier</text>')
    parts.append("</svg>")
    return "\n".join(parts)
