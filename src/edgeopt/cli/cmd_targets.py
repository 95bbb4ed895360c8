"""`edgeopt targets`: list the bundled device profiles (budgets, runtime, dtypes, cost model)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("targets")
    def targets(
        target_file: list[str] = typer.Option([], "--file", "-f", help="Also show a target from this YAML file."),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    ):
        """List the bundled device profiles (and your own YAML files with --file)."""
        from ..target import Target, bundled_targets, format_bytes
        from ._common import console, emit_json

        rows = bundled_targets() + [Target.parse(f) for f in target_file]
        if json_out:
            emit_json([t.summary() for t in rows])
            return
        from rich.table import Table

        table = Table(title="edgeopt targets (latency on non-host targets is estimated from the cost model)")
        for col in ("name", "runtime", "dtypes", "RAM", "storage", "threads", "int8 MAC/s", "fp32 MAC/s", "latency"):
            table.add_column(col, justify="right" if col in ("RAM", "storage", "threads", "int8 MAC/s", "fp32 MAC/s") else "left")
        for t in rows:
            rate = t.cost.macs_per_second
            table.add_row(
                t.name, t.runtime, ", ".join(t.dtypes), format_bytes(t.ram_bytes) if t.ram_bytes else "no budget",
                format_bytes(t.storage_bytes) if t.storage_bytes else "no budget", str(t.threads),
                f"{rate['int8']:.3g}" if "int8" in rate else "-", f"{rate['fp32']:.3g}" if "fp32" in rate else "-",
                "measured" if t.measures_latency else "estimated",
            )
        console().print(table)
