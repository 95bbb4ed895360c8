"""OpenVINO (CPU plugin) as a benchmark runtime.

Named ``ov`` rather than ``openvino`` so that ``import openvino`` inside this package never
resolves to this module.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

NAME = "openvino"
PACKAGE = "openvino"  # the import name, checked before any worker starts
EXTRA = 'openvino'  # the edgeopt extra that installs it
PRECISIONS = ("f32", "bf16", "f16")


def load(model_path: str, *, threads: int, precision: str, feeds: Mapping[str, np.ndarray]):
    """Read and compile the model for CPU (the timed "spin-up"); returns (run, precision used).

    The CPU plugin lowers f32 layers to bf16 by default on CPUs with native bf16 support, which
    changes both speed and results; the precision is therefore always set explicitly and then
    read back from the compiled model, so the report states what really ran.
    """
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(model_path)
    # Static shapes let the CPU plugin pick its fastest kernels; the benchmark feeds are fixed anyway.
    if any(inp.get_partial_shape().is_dynamic for inp in model.inputs):
        model.reshape({name: list(arr.shape) for name, arr in feeds.items()})
    config = {
        props.inference_num_threads(): threads,
        hints.inference_precision(): {"f32": ov.Type.f32, "bf16": ov.Type.bf16, "f16": ov.Type.f16}[precision],
        hints.performance_mode(): hints.PerformanceMode.LATENCY,
        props.num_streams(): 1,
    }
    compiled = core.compile_model(model, "CPU", config)
    used = compiled.get_property(hints.inference_precision())
    request = compiled.create_infer_request()

    def run(inputs: Mapping[str, np.ndarray]) -> list:
        result = request.infer(dict(inputs))
        return list(result.values())

    return run, _precision_name(used)


def _precision_name(ov_type) -> str:
    names = {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16", "f16": "f16"}
    key = str(getattr(ov_type, "get_type_name", lambda: ov_type)())
    return names.get(key, names.get(str(ov_type).lower(), key))


def import_runtime() -> str:
    """Import the runtime (not part of the timed load) and return its version."""
    import openvino
    import openvino.properties  # noqa: F401  (imported here so the timed load excludes it)
    import openvino.properties.hint  # noqa: F401

    return openvino.__version__
