"""Numerical checks of an emitted graph against its source."""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError


def check_close(source, candidate, x: np.ndarray, *, atol: float, what: str) -> float:
    """Run both models on ``x``; raise VerificationError if any output differs by more than ``atol``."""
    a = source.predict(x)
    b = candidate.predict(x)
    worst = 0.0
    for i, (u, v) in enumerate(zip(a, b)):
        if u.shape != v.shape:
            raise VerificationError(f"{what}: output {i} changed shape {u.shape} -> {v.shape}")
        err = float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)), initial=0.0))
        worst = max(worst, err)
    if not worst <= atol:
        raise VerificationError(f"{what}: outputs differ from the original by {worst:.3g} (> tolerance {atol:g}); not emitted")
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
