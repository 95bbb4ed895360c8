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
                      ops: str = "all", layers: list[str] | None = None, **settings) -> list[dict]:
    """``[{layer, op, sqnr_db, top1_agreement, max_abs_error}]`` in graph order, one per weighted layer
    (or per name in ``layers``; the others stay float in every probe).

    ``ops`` is ``quantize.int8``'s: with "all" each probe also quantizes the ops without weights (as
    the int8 candidate does); with "weighted" a probe quantizes its one layer and nothing else.
    ``settings`` are more ``quantize.int8`` parameters for the probes (calibration, per_channel...)."""
    from ..evaluation import fidelity
    from ..passes import make_pass
    from ..passes.quantize_int8 import quantizable_nodes

    proto = model.proto()
    op_types = {n.name: n.op_type for n in proto.graph.node}
    weighted = quantizable_nodes(proto)
    layers = weighted if layers is None else [n for n in weighted if n in set(layers)]
    out = []
    for i, layer in enumerate(layers):
        others = [n for n in weighted if n != layer]
        probe = make_pass("quantize.int8", {**settings, "samples": samples, "exclude_nodes": others, "compact": False,
                                            "ops": ops})
        quantized = probe(model, ctx).model
        fid = fidelity(quantized.predict(rows, outputs=[output])[0], reference)
        out.append({"layer": layer, "op": op_types.get(layer, ""), "sqnr_db": round(fid["sqnr_db"], 3),
                    "top1_agreement": fid.get("top1_agreement"), "max_abs_error": fid["max_abs_error"]})
        if progress:
            progress(layer, (i + 1) / len(layers))
    return out


# A search builds the same int8 base many times (every trial that reaches quantize.int8 with the
# same upstream passes); the ranking depends only on the model, the rows and the settings.
_RANKINGS: dict[str, list[dict]] = {}


def most_sensitive(model, ctx, *, count: int, x, candidates: list[str], output: str | int = 0,
                   **settings) -> list[dict]:
    """The ``count`` layers of ``candidates`` whose int8 version alone hurts the output most (lowest
    SQNR against the float model on the rows ``x``), most sensitive first: what mixed precision keeps
    in float. Probes share one calibration (a temporary cache unless ``ctx`` names one)."""
    import dataclasses
    import hashlib
    import tempfile

    from ..errors import ConfigError

    h = hashlib.sha256(model.onnx_bytes)
    for v in (x.values() if isinstance(x, dict) else [x]):
        h.update(np.ascontiguousarray(v).tobytes())
    h.update(repr((sorted(settings.items()), sorted(candidates), output)).encode())
    key = h.hexdigest()
    if key not in _RANKINGS:
        reference = model.predict(x, outputs=[output])[0]
        if not isinstance(reference, np.ndarray):
            raise ConfigError("quantize.int8: float_layers ranks layers by the SQNR of one output with an entry per "
                              f"sample; output {output!r} has none (e.g. boxes after NMS); use exclude_nodes instead")
        with tempfile.TemporaryDirectory(prefix="edgeopt-sens-") as tmp:
            probe_ctx = dataclasses.replace(ctx, options={**ctx.options,
                                                          "calibration_cache_dir": ctx.options.get("calibration_cache_dir") or tmp})
            table = layer_sensitivity(model, probe_ctx, rows=x, reference=reference, output=output, layers=candidates,
                                      **settings)
        if len(_RANKINGS) > 64:   # bounded: a long search sees many distinct upstream models
            _RANKINGS.clear()
        _RANKINGS[key] = sorted(table, key=lambda r: r["sqnr_db"])  # stable: graph order breaks ties
    return [dict(r) for r in _RANKINGS[key][:count]]
