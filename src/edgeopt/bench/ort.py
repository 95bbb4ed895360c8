"""ONNX Runtime (CPU execution provider) as a benchmark runtime.

Named ``ort`` rather than ``onnxruntime`` so that ``import onnxruntime`` inside this package
never resolves to this module.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

NAME = "onnxruntime"
PACKAGE = "onnxruntime"  # the import name, checked before any worker starts
EXTRA = None  # the edgeopt extra that installs it
# ONNX Runtime executes each node in the precision stored in the graph; it has no switch that
# lowers float layers, so "f32" here means "as stored, no runtime down-conversion".
PRECISIONS = ("f32",)


def load(model_path: str, *, threads: int, precision: str, feeds: Mapping[str, np.ndarray]):
    """Create a session (this is the timed "spin-up"); returns (run, precision actually used)."""
    from ..model import make_session

    del feeds  # ONNX Runtime handles dynamic shapes itself; nothing to specialise
    session = make_session(model_path, threads=threads)
    output_names = [o.name for o in session.get_outputs()]

    def run(inputs: Mapping[str, np.ndarray]) -> list:
        return session.run(output_names, inputs)

    return run, precision


def import_runtime() -> str:
    """Import the runtime (not part of the timed load) and return its version."""
    import onnxruntime

    return onnxruntime.__version__

