"""`edgeopt report OUT_DIR`: re-render a search's report from the trials stored in its study."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        out_dir: str = typer.Argument(..., help="Folder a search wrote (holds search.json)."),
        study: str = typer.Option(None, "--study", help="Study store URL, if it moved since the search (default: as recorded)."),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    ):
        """Re-render search_report.html (and .json) from the stored trial records; nothing is re-run."""
        import json
        from pathlib import Path

        from ..errors import ConfigError
        from ..search import load_result
        from ._common import console, emit_json

        folder = Path(out_dir)
        summary = folder / "search.json"
        if not summary.is_file():
            raise ConfigError(f"{str(folder)!r} holds no search.json; give the --out folder of `edgeopt search` / `edgeopt optimize`")
        try:
            recorded = json.loads(summary.read_text(encoding="utf-8"))["study"]
        except (ValueError, KeyError) as e:
            raise ConfigError(f"{str(summary)!r} is not a search summary written by edgeopt: {e}") from e
        url = study or recorded.get("storage")
        if not url:
            raise ConfigError(f"{str(summary)!r} records no study store (it ran in memory); pass --study URL")
        result = load_result(url, recorded.get("name") or "edgeopt")
        result.save(folder)
        page = folder / "search_report.html"
        if json_out:
            emit_json({"report": str(page), "trials": len(result.trials), "pareto": [t.number for t in result.pareto],
                       "best": result.best.number if result.best else None})
            return
        console().print(f"report: {page} ({len(result.trials)} trials, {len(result.pareto)} on the Pareto front)")
