"""`edgeopt evaluate`: a model's task metric with its 95% CI, and fidelity to a reference model."""

from __future__ import annotations

from typing import Optional

import typer

from . import _options as o


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Argument(..., help="Model file (.onnx, .tflite, .pt2)."),
        data: str = typer.Option(..., "--data", "-d", help="Data: .npz, .csv(.gz) or a folder of images."),
        metric: str = typer.Option("top1", "--metric", "-m", help="top1, top5, auc, mse, spearman, agreement, sqnr, cosine."),
        reference: Optional[str] = typer.Option(None, "--reference", "-r", help="Reference model: adds fidelity figures and the paired difference."),
        rows: Optional[str] = typer.Option(None, "--rows", help="Evaluate on these rows only, e.g. 500:1000."),
        output: str = typer.Option("0", "--output", help="Output to score, by name or index (models with several outputs)."),
        x_key: str = o.XKeyOpt, y_key: str = o.YKeyOpt, label_column: int = o.LabelColOpt,
        scale: Optional[float] = o.ScaleOpt, layout: Optional[str] = o.LayoutOpt,
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the JSON result to this file (atomically)."),
        json_out: bool = o.JsonOpt,
    ):
        """Evaluate MODEL on labelled data (task metric with 95% CI) and, with --reference, fidelity to it."""
        import json

        from ..data import fit_to_model, parse_range
        from ..evaluation import metric_spec, model_outputs, paired_difference, score
        from ..model import load
        from ._common import console, emit_json, to_jsonable

        spec = metric_spec(metric)
        handle = load(model)
        dataset = o.read_data(data, x_key=x_key, y_key=y_key, label_column=label_column, scale=scale, layout=layout)
        if rows:
            start, stop = parse_range(rows, len(dataset), name="--rows")
            dataset = dataset.take(start, stop)
        dataset = fit_to_model(dataset, handle)
        if spec.needs_labels and not dataset.has_labels:
            from ..errors import DataError

            raise DataError(f"metric {metric!r} needs labels but {data!r} has none; use --metric agreement with --reference")
        chosen = output if not output.lstrip("-").isdigit() else int(output)
        outputs = model_outputs(handle, dataset.x, output=chosen)
        ref_outputs = ref_eval = None
        if reference:
            ref = load(reference)
            ref_outputs = model_outputs(ref, fit_to_model(dataset, ref).x, output=chosen)
        inputs = None if dataset.is_multi_input else dataset.x
        result = score(metric, outputs, dataset.y, inputs=inputs, reference=ref_outputs)
        payload = {"model": model, "data": data, "output": handle.outputs[handle._output_indices([chosen])[0]].name,
                   "rows": list(dataset.rows) if dataset.rows else [0, len(dataset)],
                   **result.to_dict()}
        if reference and spec.needs_labels:
            ref_eval = score(metric, ref_outputs, dataset.y, inputs=inputs)
            payload["reference"] = {"model": reference, **ref_eval.to_dict()}
            if ref_eval.per_sample is not None:
                payload["difference_vs_reference"] = paired_difference(result, ref_eval).to_dict()
        if out:
            from .._io import write_text_atomic

            write_text_atomic(out, json.dumps(to_jsonable(payload), indent=2))
        if json_out:
            emit_json(payload)
            return
        c = console()
        c.print(f"[bold]{handle.name}[/] on {len(dataset)} rows of {dataset.name}: {result}")
        if ref_eval is not None:
            c.print(f"reference {reference}: {ref_eval}")
            if "difference_vs_reference" in payload:
                d = payload["difference_vs_reference"]
                c.print(f"paired difference (model - reference): {d['difference']:+.4f} (95% CI {d['ci95'][0]:+.4f}..{d['ci95'][1]:+.4f})")
        if result.fidelity:
            c.print("fidelity to reference: " + ", ".join(f"{k}={v:.4g}" for k, v in result.fidelity.items()))
