"""Per-layer quantization sensitivity: quantize one weighted layer at a time, measure the damage.

Each probe model keeps every other weighted layer in float and reuses one cached calibration, so
N layers cost N quantizer runs plus N forward passes over a few hundred tuning rows, not N
calibrations. Lower output SQNR against the float model = more sensitive; the optimizer keeps the
most sensitive layers in float first (mixed precision).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def layer_sensitivity(model, ctx, *, rows: np.ndarray, reference: np.ndarray, samples: int = 256,
                      progress: Callable[[str, float], None] | None = None, output: str | int = 0,
                      ops: str = "all") -> list[dict]:
    """``[{layer, op, sqnr_db, top1_agreement, max_abs_error}]`` in graph order, one per weighted layer.

    ``ops`` is ``quantize.int8``'s: with "all" each probe also quantizes the ops without weights (as
    the int8 candidate does); with "weighted" a probe quantizes its one layer and nothing else."""
    from ..evaluation import fidelity
    from ..passes import make_pass
    from ..passes.quantize_int8 import quantizable_nodes

    proto = model.proto()
    op_types = {n.name: n.op_type for n in proto.graph.node}
    layers = quantizable_nodes(proto)
    out = []
    for i, layer in enumerate(layers):
        others = [n for n in layers if n != layer]
        probe = make_pass("quantize.int8", {"samples": samples, "exclude_nodes": others, "compact": False, "ops": ops})
        quantized = probe(model, ctx).model
        fid = fidelity(quantized.predict(rows, outputs=[output])[0], reference)
        out.append({"layer": layer, "op": op_types.get(layer, ""), "sqnr_db": round(fid["sqnr_db"], 3),
                    "top1_agreement": fid.get("top1_agreement"), "max_abs_error": fid["max_abs_error"]})
        if progress:
            progress(layer, (i + 1) / len(layers))
    return out
