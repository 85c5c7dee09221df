"""Pareto plot of a study: robustness (attack_rank) against K=0 harmful refusal.

A fine-tune is only useful if it is harder to attack *and* still refuses harmful prompts before the
attack, without refusing harmless ones. So: x = attack_rank, y = K=0 harmful refusal (with its
Wilson interval), colour = K=0 harmless refusal. The non-dominated models (no other model has both
a higher-or-equal rank and a higher-or-equal harmful refusal) are joined by a dashed frontier.
Right-censored ranks are drawn at K_max + 1 with a ``>`` marker and tick label ``> K_max``.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from irr_ray.report.collect import ModelRow


def pareto_front(rows: Sequence[ModelRow]) -> list[ModelRow]:
    """Models not dominated in (attack_rank ↑, K=0 harmful refusal ↑), by increasing rank."""
    def dominated(a: ModelRow) -> bool:
        return any(b.attack_rank >= a.attack_rank and b.refusal_harmful >= a.refusal_harmful
                   and (b.attack_rank, b.refusal_harmful) != (a.attack_rank, a.refusal_harmful) for b in rows)

    return sorted((r for r in rows if not dominated(r)), key=lambda r: (r.attack_rank, -r.refusal_harmful))


def plot_pareto(rows: Sequence[ModelRow], out_path: str | Path, title: str = "") -> Path:
    """Draw the plot and write it to ``out_path`` (PNG) atomically; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8.0, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap, norm_kw = "viridis", {"vmin": 0.0, "vmax": 1.0}
    seen: Counter[tuple[int, float]] = Counter()
    scatter = None
    for censored, marker in ((False, "o"), (True, ">")):
        group = [r for r in rows if r.censored == censored]
        if not group:
            continue
        xs = [r.attack_rank for r in group]
        ys = [r.refusal_harmful for r in group]
        lo = [r.refusal_harmful - r.refusal_harmful_ci[0] if r.refusal_harmful_ci else 0.0 for r in group]
        hi = [r.refusal_harmful_ci[1] - r.refusal_harmful if r.refusal_harmful_ci else 0.0 for r in group]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor="0.6", elinewidth=1, capsize=3, zorder=1)
        scatter = ax.scatter(xs, ys, c=[r.refusal_harmless for r in group], cmap=cmap, marker=marker,
                             s=90, edgecolors="black", linewidths=0.8, zorder=3, **norm_kw)
    for r in rows:
        key = (r.attack_rank, round(r.refusal_harmful, 3))
        dy = 8 + 11 * seen[key]  # stack labels of coinciding points instead of overprinting them
        seen[key] += 1
        ax.annotate(r.name, (r.attack_rank, r.refusal_harmful), textcoords="offset points",
                    xytext=(7, dy), fontsize=8, zorder=4)

    front = pareto_front(rows)
    if len(front) > 1:
        ax.step([r.attack_rank for r in front], [r.refusal_harmful for r in front], where="pre",
                linestyle="--", color="0.35", linewidth=1, zorder=2)

    k_max = max(r.k_max for r in rows)
    ticks = sorted({r.attack_rank for r in rows} | {0, k_max + 1})
    ax.set_xticks(ticks, [f"> {k_max}" if t == k_max + 1 else str(t) for t in ticks])
    ax.axvline(k_max + 0.5, color="0.8", linewidth=1, zorder=0)
    ax.set_xlim(-0.5, k_max + 1.8)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("attack_rank (directions ablated until harmful refusal < threshold)")
    ax.set_ylabel("K=0 harmful refusal (95% Wilson CI)")
    ax.set_title(title or "attack_rank vs K=0 refusal")
    ax.grid(True, alpha=0.3)
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="K=0 harmless refusal (lower is better)")
    handles = [Line2D([], [], marker="o", linestyle="", color="0.4", label="attack succeeded within K_max"),
               Line2D([], [], marker=">", linestyle="", color="0.4", label=f"censored (> {k_max})"),
               Line2D([], [], linestyle="--", color="0.35", label="Pareto frontier")]
    ax.legend(handles=handles, loc="lower right", fontsize=8)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
