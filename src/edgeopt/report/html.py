"""report.html: jinja2 template + a plotly metric-vs-latency scatter with plotly.js embedded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

STATUS_COLOURS = {"chosen": "#1a7f37", "kept": "#0969da", "dropped": "#9a6700", "failed": "#cf222e", "baseline": "#57606a"}


def scatter(candidates: list[Mapping[str, Any]], baseline: Mapping[str, Any] | None, metric: str) -> str:
    """Metric on the held-out rows vs latency ratio for every measured candidate, as an HTML div with JS inlined."""
    import plotly.graph_objects as go

    fig = go.Figure()
    records = ([baseline] if baseline else []) + list(candidates)
    for status in ("baseline", "chosen", "kept", "dropped", "failed"):
        pts = [c for c in records if c.get("status") == status and c.get("latency_ratio") is not None and c.get("eval")]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[c["latency_ratio"] for c in pts], y=[c["eval"]["value"] for c in pts], mode="markers+text",
            text=[c["name"] for c in pts], textposition="top center", name=status,
            marker={"size": 12 if status == "chosen" else 9, "color": STATUS_COLOURS[status]},
            error_y={"type": "data", "symmetric": False,
                     "array": [max(0.0, (c["eval"]["ci95"][1] or c["eval"]["value"]) - c["eval"]["value"]) for c in pts],
                     "arrayminus": [max(0.0, c["eval"]["value"] - (c["eval"]["ci95"][0] or c["eval"]["value"])) for c in pts]},
            hovertemplate="%{text}<br>latency ratio %{x:.3f}<br>" + metric + " %{y:.4f}<extra></extra>",
        ))
    fig.update_layout(xaxis_title="latency vs original (1 thread; models timed in alternation)", yaxis_title=f"{metric} (held-out rows, 95% CI)",
                      height=460, margin={"l": 60, "r": 20, "t": 30, "b": 50}, template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=True)


def render(report: Mapping[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v, d=2: "—" if v is None else f"{100 * v:.{d}f}%"
    env.filters["num"] = lambda v, d=3: "—" if v is None else (f"{v:.{d}f}" if isinstance(v, (int, float)) else str(v))
    env.filters["kb"] = lambda v: "—" if v is None else f"{v / 1024:.1f} KiB"
    env.filters["mib"] = lambda v: "—" if v is None else f"{v / 2**20:.1f} MiB"
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
    settings = report.get("settings", {})
    plot = scatter(report.get("candidates", []), report.get("baseline"), settings.get("metric", "metric"))
    return env.get_template("report.html.j2").render(r=report, plot=plot)
