"""`edgeopt bench`: measure models side by side on a runtime, in fresh processes."""

from __future__ import annotations

from typing import List, Optional

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
        target: Optional[str] = typer.Option(None, "--target", "-t", help="For a C export folder (edgeopt export --format c): cortex-m4, cortex-m7 or host; builds it and runs it (QEMU for Cortex-M)."),
        dim: Optional[List[str]] = typer.Option(None, "--dim", help="Size of a dynamic input dimension other than the batch in the random inputs, e.g. --dim sequence=128 (repeatable; default 1)."),
        alternate: float = typer.Option(0.0, "--alternate", metavar="SECONDS",
                                        help="Also time the models in alternation in one process for about this many "
                                             "seconds (ONNX models): latency ratios that repeat on a noisy machine."),
        json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    ) -> None:
        """Latency (best-round p50/p90/p99), load time, peak memory and size of each MODEL, side by side.

        Each model is measured in a fresh process per round and the rounds are interleaved, so slow
        phases of a noisy machine hit every model alike; the spread column is the slowest round
        median over the fastest. With --alternate, the models are then also loaded together in one
        process and timed in short alternating blocks, each at the 0.1 quantile of its block medians
        (the machine's quiet-phase speed): the ratios edgeopt optimize decides on.
        """
        from pathlib import Path

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..bench import benchmark
        from ._common import console, emit_json, parse_dims

        if alternate < 0:
            from ..errors import ConfigError

            raise ConfigError(f"--alternate takes a number of seconds > 0 (0 skips it); got {alternate:g}")
        c_dirs = [m for m in models if Path(m).is_dir()]
        if c_dirs:
            _bench_c(models, c_dirs, target, json_output)
            return

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
                               iterations=iterations, batch=batch, precision=precision, progress=progress,
                               dims=parse_dims(dim))
        finally:
            if bar.live.is_started:
                bar.stop()
        inter = None
        if alternate:
            from ..bench import compare_interleaved

            inter = compare_interleaved(models, runtime=runtime, threads=threads, batch=batch, precision=precision,
                                        budget_s=alternate, dims=parse_dims(dim))
        if json_output:
            emit_json({**report.to_dict(), **({"interleaved": inter.to_dict()} if inter is not None else {})})
        else:
            out = console()
            out.print(report.table())
            if inter is not None:
                out.print("latency ratio vs the first, models timed in alternation in one process "
                          f"({inter.cycles} cycles of {inter.block} runs): " + ", ".join(
                              f"{name} x{ratio:.3f}" for name, ratio in zip(inter.names, inter.ratios)))
            worst = max(r.spread for r in report.results)
            if worst > 1.2:
                out.print(f"[yellow]note:[/] round medians varied up to x{worst:.2f}: the machine was noisy; "
                          "compare ratios, raise --rounds, or add --alternate 8")



def _bench_c(models, c_dirs, target, json_output) -> None:
    """Generated C folders: build with the target's compiler and count executed instructions."""
    from pathlib import Path

    from ..codegen import bench_c_dir
    from ..errors import ConfigError
    from ._common import console, emit_json

    if len(c_dirs) != len(models):
        raise ConfigError("give either model files or C export folders to edgeopt bench, not both")
    missing = [d for d in c_dirs if not (Path(d) / "memory.json").is_file()]
    if missing:
        raise ConfigError(f"{missing[0]!r} is a folder without memory.json; give a folder written by "
                          "`edgeopt export MODEL --format c --out DIR`, or a model file")
    target = target or "cortex-m4"
    results = [{"folder": d, **bench_c_dir(d, target)} for d in c_dirs]
    if json_output:
        emit_json({"target": target, "results": results})
        return
    from rich.table import Table

    table = Table(title=f"C export on {target} (instructions are executed instructions under QEMU -icount, not cycles)")
    for col in ("folder", "flash bytes", "RAM bytes", "arena bytes", "peak op", "instructions"):
        table.add_column(col, justify="left" if col in ("folder", "peak op") else "right")
    for r in results:
        table.add_row(r["folder"], f"{r['flash_bytes']:,}", f"{r['ram_bytes']:,}", f"{r['arena_bytes']:,}",
                      str(r["peak_op"]), f"{r['instructions']:,}" if r["instructions"] is not None else "n/a")
    console().print(table)
