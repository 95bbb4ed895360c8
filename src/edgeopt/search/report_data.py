"""Report pieces of a search, from its stored trial records only: the Pareto plot (plotly), the
per-trial table, the target's budgets with headroom, and a self-contained HTML page.

Plain dicts and plotly figures, so the project's report renderer can embed them; ``write_report``
writes a standalone page (plotly.js inlined: it opens offline).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..target import format_bytes


def _num(v, spec: str, empty: str = "") -> str:
    return empty if v is None else format(v, spec)


def _fmt_ms(v):
    return "-" if v is None else f"{v:.4g} ms"


def trials_table(result) -> list[dict[str, Any]]:
    """One row per trial: recipe, figures, constraint status, and why a trial was pruned."""
    pareto = {t.number for t in result.pareto}
    best = result.best.number if result.best else None
    rows = []
    for t in sorted(result.trials, key=lambda r: r.number):
        m = t.metrics
        violated = [n for n, c in zip(("accuracy drop", "RAM", "storage", "unsupported ops"), t.constraints or ()) if c > 0]
        rows.append({
            "trial": t.number,
            "state": t.state,
            "recipe": t.label(),
            "params": {k: v for k, v in t.params.items() if not k.startswith(("use__", "train__"))},
            "metric": None if not m or m.metric_value is None else round(m.metric_value, 5),
            "drop": None if not m or m.metric_drop is None else round(m.metric_drop, 5) + 0.0,  # no "-0.0"
            "drop_ci95": None if not m or not m.metric_drop_ci else [round(x, 5) for x in m.metric_drop_ci],
            "samples": m.samples if m else None,
            "latency_ms": None if not m else m.latency_ms,
            "latency_method": None if not m else m.latency_method,
            "size_bytes": None if not m else m.size_bytes,
            "ram_bytes": None if not m else m.ram_bytes,
            "energy_uj_estimated": None if not m else m.energy_uj,
            "feasible": t.feasible,
            "violates": violated,
            "pareto": t.number in pareto,
            "chosen": t.number == best,
            "reason": t.reason,
            "origin": t.origin,
            "retry_of": t.retry_of,
            "worker": t.worker,
        })
    return rows


def budgets(result) -> list[dict[str, Any]]:
    """The target's budgets, what the chosen trial (or the baseline) uses, and the headroom."""
    t = result.target
    chosen = result.best.metrics if result.best else None
    rows = []
    for name, budget, used_of in (("RAM", t.ram_bytes, lambda m: m.ram_bytes), ("storage", t.storage_bytes, lambda m: m.size_bytes)):
        used = used_of(chosen) if chosen else None
        base = used_of(result.baseline) if result.baseline else None
        rows.append({"budget": name, "limit_bytes": budget, "baseline_bytes": base, "chosen_bytes": used,
                     "headroom_bytes": None if budget is None or used is None else budget - used,
                     "headroom_fraction": None if not budget or used is None else (budget - used) / budget})
    from .study import judged_drop

    drop = judged_drop(chosen, result.drop_bound) if chosen else None
    what = "95% CI upper end" if result.drop_bound == "upper" else "estimate"
    rows.append({"budget": f"accuracy drop ({result.metric or 'metric'}, {what})", "limit": result.max_drop, "chosen": drop,
                 "headroom": None if drop is None else result.max_drop - drop})
    return rows


def pareto_figure(result):
    """Every trial as latency vs size (colour: the metric) and latency vs metric; the Pareto front
    joined by a line, infeasible trials crossed, the chosen one starred, the storage budget drawn."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("latency vs size (all evaluated trials)", f"latency vs {result.metric or 'metric'}"))
    done = [t for t in result.trials if t.metrics is not None and t.metrics.latency_ms is not None]
    method = next((t.metrics.latency_method for t in done if t.metrics.latency_method), "measured")
    groups = (("feasible", [t for t in done if t.feasible], "circle"),
              ("infeasible (violates a budget)", [t for t in done if not t.feasible], "x"))
    for label, group, symbol in groups:
        if not group:
            continue
        hover = [f"trial {t.number}: {html.escape(t.label())}<br>{t.metrics.metric}={t.metrics.metric_value:.4f} "
                 f"drop={t.metrics.metric_drop:.4f}<br>{format_bytes(t.metrics.size_bytes)}, RAM {format_bytes(t.metrics.ram_bytes)}"
                 + (f"<br>{t.reason}" if t.reason else "") for t in group]
        colour = [t.metrics.metric_value for t in group]
        fig.add_trace(go.Scatter(x=[t.metrics.latency_ms for t in group], y=[t.metrics.size_bytes / 1024 for t in group],
                                 mode="markers", name=label, text=hover, hoverinfo="text",
                                 marker=dict(symbol=symbol, size=10, color=colour, colorscale="Viridis",
                                             showscale=label == "feasible", colorbar=dict(title=result.metric or "metric", x=1.02, len=0.8))),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=[t.metrics.latency_ms for t in group], y=[t.metrics.metric_value for t in group],
                                 mode="markers", name=label, text=hover, hoverinfo="text", showlegend=False,
                                 marker=dict(symbol=symbol, size=10, color="#2a7" if symbol == "circle" else "#c33")),
                      row=1, col=2)
    if result.pareto and all(t.metrics.latency_ms is not None for t in result.pareto):
        front = sorted(result.pareto, key=lambda t: t.metrics.latency_ms)
        fig.add_trace(go.Scatter(x=[t.metrics.latency_ms for t in front], y=[t.metrics.size_bytes / 1024 for t in front],
                                 mode="lines", name="Pareto front", line=dict(color="#444", dash="dot")), row=1, col=1)
    if result.best and result.best.metrics.latency_ms is not None:
        b = result.best.metrics
        fig.add_trace(go.Scatter(x=[b.latency_ms], y=[b.size_bytes / 1024], mode="markers", name=f"chosen (trial {result.best.number})",
                                 marker=dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1))), row=1, col=1)
    if result.baseline is not None and result.baseline.latency_ms is not None:
        fig.add_trace(go.Scatter(x=[result.baseline.latency_ms], y=[result.baseline.size_bytes / 1024], mode="markers",
                                 name="baseline (unchanged)", marker=dict(symbol="diamond", size=12, color="#888")), row=1, col=1)
    if result.target.storage_bytes is not None:
        fig.add_hline(y=result.target.storage_bytes / 1024, line_dash="dash", line_color="#c33", row=1, col=1,
                      annotation_text=f"storage budget {format_bytes(result.target.storage_bytes)}")
    if result.baseline is not None and result.baseline.metric_value is not None:
        limit = result.baseline.metric_value - result.max_drop
        fig.add_hline(y=limit, line_dash="dash", line_color="#c33", row=1, col=2,
                      annotation_text=f"max drop {result.max_drop:.3g}")
    fig.update_xaxes(title_text=f"latency, ms ({method})", row=1, col=1)
    fig.update_xaxes(title_text=f"latency, ms ({method})", row=1, col=2)
    fig.update_yaxes(title_text="size on disk, KiB (log)", type="log", row=1, col=1)
    fig.update_yaxes(title_text=result.metric or "metric", row=1, col=2)
    fig.update_layout(height=560, margin=dict(l=60, r=30, t=80, b=60), template="plotly_white",
                      legend=dict(orientation="h", y=-0.18, x=0),
                      title=f"Search on {result.target.name}: {len(result.trials)} trials, {len(result.pareto)} on the Pareto front")
    return fig


def report_data(result) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data."""
    return {"summary": result.to_dict(), "trials_table": trials_table(result), "budgets": budgets(result)}


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}td.l{text-align:left}
tr.chosen{background:#fff6cc}tr.pruned{color:#888}.note{color:#555;font-size:13px}"""


def render_html(result) -> str:
    """A standalone HTML page (plotly.js inlined, so it opens offline)."""
    fig = pareto_figure(result)
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id="pareto-plot", config={"displaylogo": False})
    e = html.escape
    t = result.target
    rows = []
    for r in trials_table(result):
        cls = "chosen" if r["chosen"] else ("pruned" if r["state"] != "COMPLETE" else "")
        rows.append(
            f"<tr class='{cls}'><td>{r['trial']}</td><td class='l'>{e(r['state'])}</td><td class='l'>{e(r['recipe'])}</td>"
            f"<td class='l'>{e(json.dumps(r['params']))}</td><td>{'' if r['metric'] is None else r['metric']}</td>"
            f"<td>{'' if r['drop'] is None else r['drop']}</td><td>{_fmt_ms(r['latency_ms'])}</td>"
            f"<td>{format_bytes(r['size_bytes'])}</td><td>{format_bytes(r['ram_bytes'])}</td>"
            f"<td>{_num(r['energy_uj_estimated'], '.3g')}</td>"
            f"<td class='l'>{'yes' if r['feasible'] else e(', '.join(r['violates']) or '-')}</td>"
            f"<td>{'★' if r['chosen'] else ('•' if r['pareto'] else '')}</td><td class='l'>{e('; '.join(x for x in (r['origin'], r['reason']) if x))}</td></tr>")
    budget_rows = []
    for b in budgets(result)[:2]:
        budget_rows.append(f"<tr><td class='l'>{b['budget']}</td><td>{format_bytes(b['limit_bytes']) if b['limit_bytes'] else 'no budget'}</td>"
                           f"<td>{format_bytes(b['baseline_bytes'])}</td><td>{format_bytes(b['chosen_bytes'])}</td>"
                           f"<td>{format_bytes(b['headroom_bytes']) if b['headroom_bytes'] is not None else '-'}</td></tr>")
    acc = budgets(result)[2]
    budget_rows.append(f"<tr><td class='l'>{e(acc['budget'])}</td><td>{acc['limit']:.4g}</td><td>0</td>"
                       f"<td>{_num(acc['chosen'], '.4g', '-')}</td><td>{_num(acc['headroom'], '.4g', '-')}</td></tr>")
    best = result.best
    chosen = (f"trial {best.number}: {e(best.label())}" if best else "<b>none: no candidate meets every budget</b>")
    samples = next((tr.metrics.samples for tr in result.trials if tr.metrics and tr.metrics.samples), None)
    latency_how = "measured here with ONNX Runtime (median of per-round medians, batch 1)" if t.measures_latency else \
        f"estimated from the {e(t.name)} cost model (not measured)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>edgeopt search: {e(t.name)}</title>
<style>{_CSS}</style></head><body>
<h1>edgeopt search on {e(t.name)}</h1>
<p>Objectives: {e(', '.join(f'{o} ({d})' for o, d in zip(result.objectives, result.directions)))}. Constraints: accuracy drop
&le; {result.max_drop:.4g} ({e(result.metric or 'metric')}; judged on the drop's
{'95% CI upper end on the tune rows' if result.drop_bound == 'upper' else 'point estimate on the tune rows'}), the target's RAM and storage budgets, supported ops/dtypes.
Chosen: {chosen}.</p>
{plot}
<h2>Budgets of {e(t.name)} and headroom</h2>
<table><tr><th>budget</th><th>limit</th><th>baseline</th><th>chosen</th><th>headroom</th></tr>{''.join(budget_rows)}</table>
<h2>Every trial</h2>
<table><tr><th>#</th><th>state</th><th>recipe</th><th>parameters</th><th>{e(result.metric or 'metric')}</th><th>drop</th>
<th>latency</th><th>size</th><th>RAM</th><th>energy &micro;J (est.)</th><th>feasible</th><th>front</th><th>note</th></tr>
{''.join(rows)}</table>
<h2>How the figures were measured</h2>
<ul class="note"><li>Metric and drop: on the tune split ({samples or '?'} rows), paired with the unchanged model on the same rows; 95% CI by bootstrap / Wilson.</li>
<li>Latency: {latency_how}.</li>
<li>Size: bytes of the serialized ONNX model. RAM: peak activation memory from tensor liveness{'' if t.runtime == 'c' else ' plus weights'} (estimate).</li>
<li>Energy: estimate from {e(t.energy.source)}.</li>
<li>Trials are read from the study store ({e(str(result.study_name))}); nothing here is recomputed.</li></ul>
</body></html>"""


def write_report(result, path: Path) -> Path:
    """Write the standalone HTML page and a JSON twin (same figures) beside it, atomically."""
    from .._io import write_text_atomic
    from .._json import to_jsonable

    path = Path(path)
    write_text_atomic(path, render_html(result))
    write_text_atomic(path.with_suffix(".json"), json.dumps(to_jsonable(report_data(result)), indent=2))
    return path
