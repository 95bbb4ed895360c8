"""`edgeopt report OUT_DIR`: re-render a report from what was stored; nothing is re-run.

- a folder `edgeopt optimize --target ...` wrote (report.json of kind "search"): report.html and
  report.json are rebuilt from the trial records in the study store (and the held-out check the
  store keeps beside them);
- a folder of the PTQ candidate loop (report.json of kind "optimize"): report.html from report.json;
- a folder `edgeopt.search.run_search(out_dir=...)` wrote (search.json): search_report.html.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        out_dir: str = typer.Argument(..., help="Folder `edgeopt optimize` wrote (report.json) or a search wrote (search.json)."),
        study: str = typer.Option(None, "--study", help="Study store URL, if it moved since the search (default: as recorded)."),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    ):
        """Re-render report.html (and report.json) from the stored records; nothing is re-run."""
        import json
        from pathlib import Path

        from ..errors import ConfigError
        from ._common import console, emit_json

        folder = Path(out_dir)

        def read(path: Path) -> dict:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ConfigError(f"{str(path)!r} is not a report written by edgeopt: {e}") from e

        if (folder / "report.json").is_file():
            data = read(folder / "report.json")
            page = folder / "report.html"
            if data.get("kind") == "search":
                from ..search.outcome import load_outcome

                recorded = data.get("search", {}).get("study", {})
                url = study or recorded.get("storage")
                if not url:
                    raise ConfigError(f"{str(folder / 'report.json')!r} records no study store (it ran in memory); pass --study URL")
                outcome = load_outcome(url, recorded.get("name") or "edgeopt")
                outcome.search.storage_url = url
                outcome.report(folder / "report.json")
                outcome.report(page)
                info = {"report": str(page), "trials": len(outcome.trials), "pareto": [t.number for t in outcome.pareto],
                        "best": outcome.best.number if outcome.best else None}
            elif data.get("kind") == "optimize":
                from .._io import write_text_atomic
                from ..report import render_html

                write_text_atomic(page, render_html(data))
                info = {"report": str(page), "candidates": len(data.get("candidates", [])),
                        "best": (data.get("chosen") or {}).get("name")}
            else:
                raise ConfigError(f"{str(folder / 'report.json')!r} is not an edgeopt optimize report (kind {data.get('kind')!r})")
        elif (folder / "search.json").is_file():
            from ..search import load_result

            try:
                recorded = read(folder / "search.json")["study"]
            except KeyError as e:
                raise ConfigError(f"{str(folder / 'search.json')!r} is not a search summary written by edgeopt: {e}") from e
            url = study or recorded.get("storage")
            if not url:
                raise ConfigError(f"{str(folder / 'search.json')!r} records no study store (it ran in memory); pass --study URL")
            result = load_result(url, recorded.get("name") or "edgeopt")
            result.save(folder)
            page = folder / "search_report.html"
            info = {"report": str(page), "trials": len(result.trials), "pareto": [t.number for t in result.pareto],
                    "best": result.best.number if result.best else None}
        else:
            raise ConfigError(f"{str(folder)!r} holds no report.json or search.json; give the --out folder of "
                              "`edgeopt optimize` / `edgeopt search`")
        if json_out:
            emit_json(info)
            return
        extra = f", {len(info['pareto'])} on the Pareto front" if "pareto" in info else ""
        console().print(f"report: {page}{extra}")
