"""`edgeopt bench`: measure models side by side on a runtime, in fresh processes."""

from __future__ import annotations

from typing import List

import typer


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        models: List[str] = typer.Argument(..., metavar="MODEL [MODEL ...]", help="Model files; ratios are against the first."),
        runtime: str = typer.Option("onnxruntime", "--runtime", "-r", help="onnxruntime or openvino."),
        threads: int = typer.Option(1, "--threads", help="Intra-op threads (inter-op is always 1)."),
        rounds: int = typer.Option(5, "--rounds", help="Interleaved rounds; each model runs in a fresh process per round."),
        warmup: int = typer.Option(10, "--warmup", help="Untimed runs before timing, per round."),
        iterations: int = typer.Option(100, "--iterations", "-n", help="Timed runs per round."),
        batch: int = typer.Option(1, "--batch", help="Batch size of the random inputs."),
        precision: str = typer.Option("f32", "--precision", help="Execution precision the runtime may use (openvino: f32, bf16, f16)."),
        json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    ) -> None:
        """Latency (best-round p50/p90/p99), load time, peak memory and size of each MODEL, side by side.

        Each model is measured in a fresh process per round and the rounds are interleaved, so slow
        phases of a noisy machine hit every model alike; the spread column is the slowest round
        median over the fastest.
        """
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..bench import benchmark
        from ._common import console, emit_json

        # Started on the first progress call, i.e. after the arguments were checked, so that a
        # usage error prints its one line without an empty progress bar before it.
        bar = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                       console=console(stderr=True), transient=True)
        task = bar.add_task(f"benchmarking on {runtime}", total=1.0)

        def progress(message: str, fraction: float) -> None:
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=fraction, description=message)

        try:
            report = benchmark(models, runtime=runtime, threads=threads, rounds=rounds, warmup=warmup,
                               iterations=iterations, batch=batch, precision=precision, progress=progress)
        finally:
            if bar.live.is_started:
                bar.stop()
        if json_output:
            emit_json(report)
        else:
            out = console()
            out.print(report.table())
            worst = max(r.spread for r in report.results)
            if worst > 1.2:
                out.print(f"[yellow]note:[/] round medians varied up to x{worst:.2f}: the machine was noisy; "
                          "compare ratios, or raise --rounds")
