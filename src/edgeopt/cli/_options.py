"""Options shared by several commands (data reading, output), declared once."""

from __future__ import annotations

from typing import Optional

import typer

DataOpt = typer.Option(None, "--data", "-d", help="Data: .npz, .csv(.gz), a folder of images (one subfolder per class).")
XKeyOpt = typer.Option("x", "--x-key", help="Array name of the inputs in an .npz file; several inputs as a comma list named like the model's inputs (input_ids,attention_mask).")
YKeyOpt = typer.Option("y", "--y-key", help="Array name of the labels in an .npz file ('' for none).")
LabelColOpt = typer.Option(-1, "--label-column", help="Label column of a CSV table (-1: last).")
ScaleOpt = typer.Option(None, "--scale", help="Multiply inputs by this (e.g. 0.00392 for /255).")
LayoutOpt = typer.Option(None, "--layout", help="Convert channel order: nhwc->nchw or nchw->nhwc.")
LimitOpt = typer.Option(None, "--limit", help="Use only the first N rows.")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def read_data(path: Optional[str], *, x_key: str = "x", y_key: str = "y", label_column: int = -1,
              scale: Optional[float] = None, layout: Optional[str] = None, limit: Optional[int] = None):
    """Load a Dataset from CLI options (None when no --data)."""
    if path is None:
        return None
    from ..data import Preprocess, load_data

    pre = Preprocess(scale=scale, layout=layout) if (scale is not None or layout) else None
    return load_data(path, x_key=x_key, y_key=y_key or None, label_column=label_column, preprocess=pre, limit=limit)
