"""Numerical checks of an emitted graph against its source."""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError


def check_close(source, candidate, x, *, atol: float, what: str, scaled: bool = False) -> float:
    """Run both models on ``x`` (an array or ``{input: array}``); raise VerificationError if any
    output differs by more than ``atol``, or with ``scaled`` by more than ``atol`` times the largest
    reference output magnitude when that exceeds 1 (a rewrite that reorders float32 arithmetic, such as
    folding a scale into weights, moves an output of 40 by ~2e-5: a relative error of 5e-7)."""
    a = source.predict(x)
    b = candidate.predict(x)
    worst, largest = 0.0, 0.0
    for i, (u, v) in enumerate(zip(a, b)):
        if u.shape != v.shape:
            raise VerificationError(f"{what}: output {i} changed shape {u.shape} -> {v.shape}")
        err = float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)), initial=0.0))
        worst = max(worst, err)
        largest = max(largest, float(np.max(np.abs(u), initial=0.0)))
    limit = atol * max(1.0, largest) if scaled else atol
    if not worst <= limit:
        raise VerificationError(f"{what}: outputs differ from the original by {worst:.3g} (> tolerance {limit:g}); not emitted")
    return worst


def sample_inputs(model, ctx, n: int = 16) -> np.ndarray | dict[str, np.ndarray]:
    """Up to ``n`` samples (on axis 0; ``{input name: array}`` for a multi-input model): real rows
    when a calibration split exists (random inputs miss real ranges), else ``example_inputs``."""
    data = getattr(ctx, "calib", None) or getattr(ctx, "tune", None)
    if data is not None and len(data):
        return data.take(0, min(n, len(data))).x
    first = model.inputs[0]
    fixed_one = first.batch_axis is not None and first.shape[first.batch_axis] == 1
    feeds = model.example_inputs(batch=1 if fixed_one else n)
    samples = {s.name: np.moveaxis(feeds[s.name], s.batch_axis, 0) if s.batch_axis else feeds[s.name]
               for s in model.inputs}
    return samples if len(model.inputs) > 1 else samples[first.name]
