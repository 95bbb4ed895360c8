"""Reports: JSON with every figure, and a self-contained HTML page (plots embedded, opens offline).

The renderer is generic over a list of candidate records (``name, status, reason, size_bytes,
latency_ratio, eval{value, ci95}, ...``), so any search that produces such records reuses it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["to_json", "render_html", "public"]


def public(report: Mapping[str, Any]) -> dict:
    """The report without private working data (keys starting with '_')."""
    return {k: v for k, v in report.items() if not str(k).startswith("_")}


def to_json(report: Mapping[str, Any]) -> str:
    from .._json import to_jsonable

    return json.dumps(to_jsonable(public(report)), indent=2) + "\n"


def render_html(report: Mapping[str, Any]) -> str:
    from .html import render

    return render(public(report))
