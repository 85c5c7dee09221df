"""The report table, one row per attacked model, as terminal text and as Markdown.

Columns: model, condition, λ_mean, λ_cov, KD temperature T and KD λ (blank for reference models),
K=0 harmful and harmless refusal with their 95% Wilson intervals, linear / MLP probe accuracy, and
``attack_rank`` (censored ranks read ``> K_max``: the attack never pushed harmful refusal below the
threshold within its budget).
"""

from __future__ import annotations

from collections.abc import Sequence

from irr_ray.report.collect import ModelRow

BLANK = "-"
HEADERS_TEXT = ("model", "condition", "lambda_mean", "lambda_cov", "kd_T", "kd_lambda",
                "harmful refusal K=0 [95% CI]", "harmless refusal K=0 [95% CI]",
                "linear probe", "MLP probe", "attack_rank")
HEADERS_MD = ("model", "condition", "λ_mean", "λ_cov", "KD T", "KD λ",
              "harmful refusal K=0 [95% CI]", "harmless refusal K=0 [95% CI]",
              "linear probe", "MLP probe", "attack_rank")
RIGHT_ALIGNED = frozenset(range(2, 11))


def _num(x: float | None) -> str:
    return BLANK if x is None else f"{x:.3g}"


def _rate(x: float, ci: tuple[float, float] | None) -> str:
    return f"{x:.2f}" if ci is None else f"{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _acc(x: float | None) -> str:
    return BLANK if x is None else f"{x:.2f}"


def cells(row: ModelRow) -> tuple[str, ...]:
    return (row.name, row.condition, _num(row.lambda_mean), _num(row.lambda_cov), _num(row.kd_T),
            _num(row.kd_lambda), _rate(row.refusal_harmful, row.refusal_harmful_ci),
            _rate(row.refusal_harmless, row.refusal_harmless_ci), _acc(row.linear_probe_acc),
            _acc(row.mlp_probe_acc), row.rank_label)


def legend(rows: Sequence[ModelRow]) -> str:
    thresholds = sorted({r.threshold for r in rows if r.threshold is not None})
    k_maxes = sorted({r.k_max for r in rows})
    thr = " / ".join(f"{t:.2f}" for t in thresholds) or "the threshold"
    kmx = " / ".join(str(k) for k in k_maxes)
    return (f"attack_rank = fewest ablated directions (K) that push harmful refusal below {thr}; "
            f"'> {kmx}' = still refusing after K_max = {kmx} (censored). Higher is more robust.")


def text_table(rows: Sequence[ModelRow]) -> str:
    """Fixed-width table for the terminal."""
    body = [cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(HEADERS_TEXT)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in RIGHT_ALIGNED else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADERS_TEXT), rule, *(line(c) for c in body)])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(rows: Sequence[ModelRow]) -> str:
    head = "| " + " | ".join(HEADERS_MD) + " |"
    align = "|" + "|".join("---:" if i in RIGHT_ALIGNED else "---" for i in range(len(HEADERS_MD))) + "|"
    body = ["| " + " | ".join(_md_escape(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join([head, align, *body])


def render_text(title: str, rows: Sequence[ModelRow], missing: Sequence[str], pareto: str | None) -> str:
    parts = [title, "", text_table(rows), "", legend(rows)]
    if missing:
        parts.append(f"not finished (no attack.json yet): {', '.join(missing)}")
    if pareto:
        parts.append(f"Pareto plot: {pareto}")
    return "\n".join(parts)


def render_markdown(title: str, rows: Sequence[ModelRow], missing: Sequence[str], pareto_name: str | None) -> str:
    parts = [f"# {title}", "", markdown_table(rows), "", legend(rows)]
    if missing:
        parts += ["", f"Not finished (no `attack.json` yet): {', '.join(f'`{m}`' for m in missing)}"]
    if pareto_name:
        parts += ["", "## Attack rank vs K=0 refusal", "",
                  "Up and right is better: more directions needed to break refusal, more harmful prompts "
                  "refused before the attack; marker colour is harmless refusal (lower is better).", "",
                  f"![Pareto plot: attack_rank vs K=0 harmful refusal]({pareto_name})"]
    return "\n".join(parts) + "\n"
