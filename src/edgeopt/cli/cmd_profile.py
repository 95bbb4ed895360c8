"""`edgeopt profile MODEL`: parameters, weight bytes, MACs, peak activation memory, op mix,
per-node latency share and (with data) the task metric."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile_command(
        model: str = typer.Argument(..., help="Model file (.onnx, .tflite, .pt2)."),
        data: Optional[str] = typer.Option(None, "--data", help="Data to evaluate on (.npz, .csv, image folder)."),
        metric: Optional[str] = typer.Option(None, "--metric", help="Metric to evaluate on --data (top1, top5, auc, mse, ...). Without it, --data only supplies the latency input."),
        x_key: str = typer.Option("x", "--x-key", help="Array name of the inputs in an .npz file; several inputs as a comma list named like the model's inputs (input_ids,attention_mask)."),
        y_key: str = typer.Option("y", "--y-key", help="Array name of the labels in an .npz file."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N rows of the data."),
        threads: int = typer.Option(1, "--threads", help="ONNX Runtime intra-op threads for the latency measurement."),
        runs: int = typer.Option(50, "--runs", help="Measured runs for the latency shares (after 5 warm-up runs)."),
        no_measure: bool = typer.Option(False, "--no-measure", help="Static analysis only: skip the latency measurement."),
        json_output: bool = typer.Option(False, "--json", help="Print the full profile as JSON on stdout."),
        top: int = typer.Option(20, "--top", help="Rows in the per-node table."),
        dim: Optional[List[str]] = typer.Option(None, "--dim", help="Size of a dynamic input dimension other than the batch, e.g. --dim sequence=128 (repeatable; default 1)."),
        sort: Optional[str] = typer.Option(None, "--sort", help="Order the node table by 'macs' or 'latency' (default: latency when measured)."),
    ):
        """Profile a model: params, weight bytes, MACs, peak activation memory, op mix, latency share per node and (with --data) the metric with its 95% CI."""
        from ..errors import ConfigError
        from ..profiling import profile

        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be a positive row count; got {limit}")
        if top < 1:
            raise ConfigError(f"--top must be >= 1; got {top}")
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1; got {threads}")
        if sort not in (None, "macs", "latency"):
            raise ConfigError(f"--sort must be 'macs' or 'latency'; got {sort!r}")
        if sort == "latency" and no_measure:
            raise ConfigError("--sort latency needs the latency measurement; drop --no-measure or use --sort macs")
        if metric is not None and data is None:
            raise ConfigError("--metric needs --data (the rows to evaluate on)")
        dataset = None
        if data is not None:
            from ..data import load_data

            dataset = load_data(data, x_key=x_key, y_key=y_key, limit=limit)
        from ._common import parse_dims

        result = profile(model, dataset, metric=metric, measure=not no_measure, threads=threads, runs=runs,
                         dims=parse_dims(dim))
        if json_output:
            from ._common import emit_json

            emit_json(result)
            return
        from ._common import console

        console().print(result.table(top=top, sort=sort))
