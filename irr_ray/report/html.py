"""The study overview and the report as HTML pages (served by ``irr-ray ui``).

The overview answers on first load, with no click, no script and nothing fetched from the
network: one row per model (original, base, every trial) with its verdict, strongest attack,
robust_k, attack_rank and K=0 refusal, a link to its MLflow run, and the chart of robustness
against K=0 harmful refusal (:mod:`irr_ray.report.chart_svg`) beside the table. The report page is
``report.md``'s content — the full robustness profile (one column per attack), the legend, each
verdict's reason and the Pareto plot — from the same rows and the same cell formatting
(:mod:`irr_ray.report.render`).
"""

from __future__ import annotations

from html import escape

from irr_ray.report.chart_svg import VERDICT_COLOURS, robustness_chart
from irr_ray.report.collect import DIM, ModelRow
from irr_ray.report.overview import StudyOverview
from irr_ray.report.pareto import pareto_front, robust_share
from irr_ray.report.render import PARTIAL, cells, columns, legend_lines, pareto_caption, reasons

REPORT_PATH = "/report"
PARETO_PATH = "/pareto.png"
REPORT_MD_PATH = "/report.md"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 12px 20px; color: #1d1d1f; font-size: 13px; }
h1 { font-size: 20px; margin: 0 0 3px; } h2 { font-size: 14px; margin: 0 0 6px; }
.sub { color: #555; margin: 0 0 6px; }
nav a { margin-right: 16px; font-weight: 600; }
.layout { display: flex; flex-wrap: wrap; gap: 10px 24px; align-items: flex-start; margin-top: 10px; }
.layout > section { flex: 0 1 auto; min-width: 0; overflow-x: auto; } .layout > figure { flex: 0 0 auto; margin: 0; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; border-bottom: 1px solid #e2e2e2;
  white-space: nowrap; text-align: left; } th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.reference td { background: #fafafa; }
.ci { color: #777; font-size: 11.5px; }
.verdict { display: inline-block; padding: 0 8px; border-radius: 9px; color: white; font-weight: 600; }
.note { color: #555; font-size: 12px; margin: 4px 0; max-width: 620px; } details { margin-top: 6px; font-size: 12px; }
img { max-width: 100%; }
"""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>\n{body}\n</body></html>\n")


def _link(url: str | None, text: str, title: str = "") -> str:
    if url is None:
        return escape(text)
    tip = f' title="{escape(title)}"' if title else ""
    return f'<a href="{escape(url)}"{tip}>{escape(text)}</a>'


def verdict_badge(row: ModelRow) -> str:
    colour = VERDICT_COLOURS.get(row.verdict, "#444")
    partial = PARTIAL if row.suite_partial else ""
    return f'<span class="verdict" style="background:{colour}">{escape(row.verdict + partial)}</span>'


def strongest_text(row: ModelRow) -> str:
    """``finetune (broken@10)``; a ``dim``-only study names ``dim`` and where it decided."""
    if row.strongest is not None:
        return row.strongest_label
    entry = row.entry(DIM)
    return "-" if entry is None else f"{DIM} ({entry.label})"


def _rate(x: float, ci: tuple[float, float] | None) -> str:
    """``0.99 [0.89, 1.00]`` as HTML, the interval in small grey type."""
    return f"{x:.2f}" if ci is None else f'{x:.2f} <span class="ci">[{ci[0]:.2f}, {ci[1]:.2f}]</span>'


OVERVIEW_HEADERS = (
    ("model", "", "the model; links to its MLflow run"),
    ("condition", "", "training condition (reference models: their own name)"),
    ("verdict", "", "the strongest attack's verdict: a model broken by any attack is broken"),
    ("strongest attack", "", "the attack that decided the verdict, with its own verdict@budget"),
    ("robust_k", "num", "largest K with harmful refusal kept high and harmless refusal not raised (dim)"),
    ("attack_rank", "num", "the method's number: fewest ablated directions that push harmful refusal below "
                           "the threshold (dim; '> K_max' = never)"),
    ("K=0 harmful refusal", "num", "share of harmful held-out prompts refused before any attack [95% CI]"),
    ("K=0 harmless refusal", "num", "share of harmless held-out prompts refused before any attack [95% CI] "
                                    "(lower is better)"),
)
SHARE_HEADER = ("robust share", "num", "the chart's x: smallest share of any attack's budget withstood")


def overview_table(ov: StudyOverview) -> str:
    suite = bool(ov.attacks)
    headers = OVERVIEW_HEADERS + ((SHARE_HEADER,) if suite else ())
    head = "".join(f'<th class="{cls}" title="{escape(tip)}">{escape(h)}</th>' for h, cls, tip in headers)
    body = []
    for r in ov.rows:
        share = robust_share(r)
        cells_html = [
            _link(ov.run_url(r.name), r.name, f"MLflow run of {r.name}"),
            escape(r.condition),
            verdict_badge(r),
            escape(strongest_text(r)),
            escape(r.robust_k_label),
            escape(r.rank_label),
            _rate(r.refusal_harmful, r.refusal_harmful_ci),
            _rate(r.refusal_harmless, r.refusal_harmless_ci),
        ]
        if suite:
            cells_html.append("none" if share is None else f"{share:.2f}")
        tds = "".join(f'<td class="{cls}">{c}</td>' for c, (_, cls, _) in zip(cells_html, headers))
        kind = "reference" if r.is_reference else "trial"
        body.append(f'<tr class="{kind}" data-model="{escape(r.name)}">{tds}</tr>')
    return f'<table id="models"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _summary(ov: StudyOverview) -> str:
    refs = [r.name for r in ov.rows if r.is_reference]
    trials = len(ov.rows) - len(refs)
    attacks = ", ".join(ov.attacks) if ov.attacks else DIM
    text = (f"{len(ov.rows)} models ({', '.join(refs) or 'no reference model'} and {trials} trial"
            f"{'' if trials == 1 else 's'}) · attacks: {attacks}")
    if ov.missing:
        text += f" · not finished yet: {', '.join(ov.missing)}"
    return text


def _nav(ov: StudyOverview) -> str:
    links = [_link(REPORT_PATH, "Report", "the full robustness profile, every verdict's reason, the Pareto plot"),
             _link(PARETO_PATH, "Pareto plot", "robustness vs K=0 refusal, coloured by K=0 harmless refusal")]
    if ov.report_md is not None:
        links.append(_link(REPORT_MD_PATH, "report.md", str(ov.report_md)))
    for i, url in enumerate(ov.experiment_urls()):
        links.append(_link(url, "All runs in MLflow" + (f" ({i + 1})" if i else ""), "the MLflow UI"))
    return "<nav>" + "".join(links) + "</nav>"


def overview_page(ov: StudyOverview) -> str:
    """The page ``irr-ray ui`` opens first (module docstring)."""
    legend = "".join(f"<li>{escape(line)}</li>" for line in legend_lines(ov.rows))
    reading = ("Up and right is better: more of the attacks' budget withstood, more harmful prompts refused "
               "before any attack. Colour = verdict" + ("; the dashed line joins the models no other model beats "
                                                       "on both." if len(pareto_front(ov.rows)) > 1 else "."))
    body = f"""
<header><h1>irr-ray study: {escape(ov.name)}</h1>
<p class="sub">{escape(_summary(ov))}</p>{_nav(ov)}</header>
<div class="layout">
<section><h2>Every model: reference models, then trials most trustworthy first</h2>{overview_table(ov)}
<details><summary>What the columns mean</summary><ul>{legend}</ul></details></section>
<figure><h2>Robustness vs K=0 harmful refusal</h2>{robustness_chart(ov.rows)}
<figcaption class="note">{escape(reading)}</figcaption></figure>
</div>"""
    return _page(f"irr-ray study: {ov.name}", body)


def _nested_list(lines: list[str]) -> str:
    """``reasons()``'s lines as a list, the indented ones (each attack's) nested under their model."""
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("  ") and items:
            items[-1][1].append(line.strip())
        else:
            items.append((line.strip(), []))
    def sub(children: list[str]) -> str:
        return "" if not children else '<ul class="note">' + "".join(f"<li>{escape(c)}</li>" for c in children) + "</ul>"
    return '<ul id="verdicts">' + "".join(f"<li>{escape(head)}{sub(children)}</li>" for head, children in items) + "</ul>"


def report_page(ov: StudyOverview) -> str:
    """``report.md`` as a page: the full table, legend, verdict reasons and the Pareto plot."""
    _, headers, right, attacks = columns(ov.rows)
    head = "".join(f'<th class="{"num" if i in right else ""}">{escape(h)}</th>' for i, h in enumerate(headers))
    body_rows = "".join(
        "<tr>" + "".join(f'<td class="{"num" if i in right else ""}">{escape(c)}</td>'
                         for i, c in enumerate(cells(r, attacks))) + "</tr>" for r in ov.rows)
    legend = "".join(f"<li>{escape(line)}</li>" for line in legend_lines(ov.rows))
    why = _nested_list(reasons(ov.rows))
    missing = (f'<p class="note">Not finished (no attack.json yet): {escape(", ".join(ov.missing))}</p>'
               if ov.missing else "")
    title, caption = pareto_caption(ov.rows)
    source = (f"the study's {ov.pareto_png.name}" if ov.pareto_png is not None
              else "rendered now from the study's results (`irr-ray report` writes pareto.png into the study)")
    body = f"""
<p><a href="/">← study overview</a></p>
<h1>irr-ray report: {escape(ov.name)}</h1>
<table id="report"><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table>
<ul class="note">{legend}</ul>{missing}
<h2>Verdicts</h2>{why}
<h2>{escape(title)}</h2><p>{escape(caption)}</p>
<img id="pareto" src="{PARETO_PATH}" alt="Pareto plot: {escape(title)}">
<p class="note">Pareto plot: {escape(source)}</p>"""
    return _page(f"irr-ray report: {ov.name}", body)
