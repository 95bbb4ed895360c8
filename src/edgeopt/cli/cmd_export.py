"""`edgeopt export`: write a model in a deployable form (``--format c``: C99 source + memory plan)."""

from __future__ import annotations

from typing import Optional

import typer

FORMATS = ("c",)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(..., metavar="MODEL", help="An int8 QDQ ONNX model."),
        fmt: str = typer.Option("c", "--format", "-f", help="Output format: c (C99 source for microcontrollers)."),
        target: str = typer.Option("cortex-m4", "--target", "-t", help="host, cortex-m4 or cortex-m7."),
        out: str = typer.Option(..., "--out", "-o", help="Output folder (model.c, model.h, kernels, memory.json)."),
        data: Optional[str] = typer.Option(None, "--data", help="Optional .npz with key 'x': float inputs used to verify the C against ONNX Runtime (first 32 rows)."),
        json_output: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Compile MODEL to C: weights in const arrays (flash), one static arena (RAM), checked against ONNX Runtime.

        Nothing is written unless the generated code compiles and its outputs match ONNX Runtime's
        int8 outputs within the stated tolerance.
        """
        from ..errors import ConfigError
        from ._common import console, emit_json

        if fmt not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
        import numpy as np

        from ..codegen import export_c

        samples = None
        if data is not None:
            from ..errors import DataError

            try:
                with np.load(data, allow_pickle=False) as npz:
                    samples = np.asarray(npz["x"][:32], np.float32)
            except (OSError, KeyError, ValueError) as e:
                raise DataError(f"--data {data!r} must be an .npz file with an 'x' array of model inputs ({e})") from e
        result = export_c(model, out, target=target, samples=samples)
        if json_output:
            emit_json(result)
            return
        from rich.table import Table

        table = Table(title=f"C export -> {result.out_dir}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("arena (RAM) bytes", f"{result.arena_bytes:,}")
        table.add_row("weights + constants bytes", f"{result.constants_bytes:,}")
        table.add_row("peak set by", str(result.peak_op))
        if result.firmware.get("measured"):
            table.add_row(f"firmware flash bytes ({result.target})", f"{result.firmware['flash_bytes']:,}")
            table.add_row(f"firmware static RAM bytes ({result.target})", f"{result.firmware['ram_bytes']:,}")
        v = result.verification
        if v:
            table.add_row("vs ONNX Runtime int8", f"max {v['max_abs_lsb']} LSB, {v['bit_exact_samples']}/{v['samples']} samples bit-exact")
        console().print(table)
