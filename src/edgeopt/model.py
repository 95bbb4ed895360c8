"""ModelHandle: one model in flight, and the loaders that make one.

Every model is held as an ONNX graph (a PyTorch model is exported once, a TFLite model converted
once); the trainable PyTorch twin is kept when there is one. A handle is immutable from the
outside: passes return new handles, and ``proto()`` gives a fresh copy to edit.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError, DataError, ModelLoadError, UnsupportedModelError, VerificationError

# ONNX TensorProto element types -> numpy dtypes, for the types a model's inputs can carry.
_ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a graph input or output. A dynamic dimension is a str or None."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every dynamic dimension set to ``batch`` (first) or 1 (others)."""
        return tuple(d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(self.shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class PassRecord:
    """One step of a model's history: which pass ran, with which parameters."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


def _tensor_specs(values) -> tuple[TensorSpec, ...]:
    specs = []
    for v in values:
        tt = v.type.tensor_type
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        np_type = _ONNX_TO_NUMPY.get(tt.elem_type)
        specs.append(TensorSpec(v.name, tuple(dims), np.dtype(np_type).name if np_type else f"onnx:{tt.elem_type}"))
    return tuple(specs)


class ModelHandle:
    """One model: its ONNX graph (as serialized bytes), I/O specs, origin and history.

    >>> import edgeopt
    >>> m = edgeopt.load("../shared/data/mlperf_tiny/ic/resnet8_cifar10.onnx")  # doctest: +SKIP
    >>> m.inputs[0].shape  # doctest: +SKIP
    ('unk__...', 32, 32, 3)
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        name: str = "model",
        source: str | None = None,
        source_format: str = "onnx",
        torch_module: Any = None,
        history: Sequence[PassRecord] = (),
        base_dir: str | os.PathLike | None = None,
    ):
        import onnx

        self._bytes = bytes(onnx_bytes)
        self.name = name
        self.source = source
        self.source_format = source_format
        self.torch_module = torch_module
        self.history = tuple(history)
        self.base_dir = Path(base_dir) if base_dir else None
        proto = onnx.load_from_string(self._bytes)
        initializer_names = {i.name for i in proto.graph.initializer}
        self.inputs = _tensor_specs([i for i in proto.graph.input if i.name not in initializer_names])
        self.outputs = _tensor_specs(proto.graph.output)
        self.opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
        self._session = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_proto(cls, proto, **kwargs) -> "ModelHandle":
        return cls(proto.SerializeToString(), **kwargs)

    def derive(self, proto, record: PassRecord | None = None, *, torch_module: Any = None) -> "ModelHandle":
        """A new handle for an edited graph, with ``record`` appended to the history."""
        history = self.history + ((record,) if record else ())
        return ModelHandle.from_proto(
            proto, name=self.name, source=self.source, source_format=self.source_format,
            torch_module=torch_module, history=history, base_dir=self.base_dir,
        )

    # -- access -------------------------------------------------------------------------------
    def proto(self):
        """A fresh, editable copy of the ONNX graph."""
        import onnx

        return onnx.load_from_string(self._bytes)

    @property
    def onnx_bytes(self) -> bytes:
        return self._bytes

    @property
    def size_bytes(self) -> int:
        """Bytes of the serialized ONNX model (what lands on disk)."""
        return len(self._bytes)

    def session(self, threads: int = 1):
        """An ONNX Runtime CPU session for this model (cached per handle)."""
        if self._session is None:
            self._session = make_session(self._bytes, threads=threads)
        return self._session

    def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the right shapes and dtypes (for benchmarking and smoke checks)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for spec in self.inputs:
            shape = spec.concrete_shape(batch)
            dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx:") else np.float32
            if np.issubdtype(dtype, np.integer):
                feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        return feeds

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model once on ONNX Runtime; returns the outputs in graph order."""
        feeds = self._feeds(inputs)
        return self.session().run(None, feeds)

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Run the model over many samples in batches (first axis); returns concatenated outputs.

        Models whose first input dimension is fixed to 1 are run one sample at a time.
        """
        arrays = self._feeds(x)
        n = len(next(iter(arrays.values())))
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        step = 1 if first == 1 else batch_size
        outs: list[list[np.ndarray]] = [[] for _ in self.outputs]
        sess = self.session()
        for start in range(0, n, step):
            chunk = {k: v[start : start + step] for k, v in arrays.items()}
            for i, o in enumerate(sess.run(None, chunk)):
                outs[i].append(o)
        return [np.concatenate(o, axis=0) for o in outs]

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        elif isinstance(inputs, np.ndarray):
            feeds = {self.inputs[0].name: inputs}
        else:
            feeds = {spec.name: arr for spec, arr in zip(self.inputs, inputs)}
        expected = {s.name: s for s in self.inputs}
        missing = set(expected) - set(feeds)
        if missing:
            raise DataError(f"model input(s) {sorted(missing)} not provided; the model takes {[s.name for s in self.inputs]}")
        for key, arr in feeds.items():
            spec = expected.get(key)
            if spec is None:
                raise DataError(f"data has input {key!r}, but the model's inputs are {sorted(expected)}")
            arr = np.asarray(arr)
            if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != a for d, a in zip(spec.shape[1:], arr.shape[1:])
            ):
                raise DataError(
                    f"data shape {tuple(arr.shape)} does not fit model input {spec.name!r} of shape "
                    f"{tuple(spec.shape)} (the first axis is the batch); reshape or re-layout the data "
                    "(e.g. --layout nhwc/nchw)"
                )
            want = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx:") else arr.dtype
            if arr.dtype != want:
                if np.issubdtype(want, np.floating) or np.can_cast(arr.dtype, want, "same_kind"):
                    arr = arr.astype(want)
                else:
                    raise DataError(f"data dtype {arr.dtype} does not fit model input {spec.name!r} of dtype {want}")
            feeds[key] = arr
        return feeds

    # -- output -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the ONNX model atomically (temporary file, then rename)."""
        from ._io import write_bytes_atomic

        return write_bytes_atomic(path, self._bytes)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "format": self.source_format,
            "opset": self.opset,
            "size_bytes": self.size_bytes,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "history": [{"pass": r.name, "params": dict(r.params)} for r in self.history],
        }

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in self.inputs)
        return f"ModelHandle({self.name!r}, {self.source_format}, inputs=[{ins}], {self.size_bytes} bytes)"


def make_session(model: bytes | str | os.PathLike, *, threads: int = 1, optimize: bool = True, profile: bool = False):
    """An ONNX Runtime CPU session with a fixed thread count (measurements must be repeatable)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile:
        so.enable_profiling = True
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own untyped exceptions
        raise UnsupportedModelError(f"ONNX Runtime cannot load this model: {str(e).splitlines()[0][:300]}") from e


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------

def load(
    model: Any,
    *,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    name: str | None = None,
) -> ModelHandle:
    """Load a model from a path (``.onnx``, ``.tflite``, ``.pt2``) or a ``torch.nn.Module``.

    >>> m = load("../shared/data/mlperf_tiny/kws/dscnn_kws12.onnx")  # doctest: +SKIP
    >>> import torch; net = torch.nn.Linear(4, 2)  # doctest: +SKIP
    >>> m = load(net, example_inputs=torch.zeros(1, 4))  # doctest: +SKIP
    """
    if isinstance(model, ModelHandle):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ModelLoadError(f"model file {str(path)!r} does not exist")
        if path.is_dir():
            raise ModelLoadError(f"{str(path)!r} is a folder; give the model file inside it (.onnx, .tflite or .pt2)")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file {str(path)!r} is empty (0 bytes)")
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return load_onnx(path, name=name)
        if suffix == ".tflite":
            return load_tflite(path, name=name)
        if suffix == ".pt2":
            return load_exported_program(path, name=name)
        if suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl"):
            raise ModelLoadError(
                f"{str(path)!r} is a pickled PyTorch checkpoint; edgeopt never unpickles files. "
                "Load the nn.Module yourself and pass it to edgeopt.load(module, example_inputs=...), "
                "or save it with torch.export.save(...) as a .pt2 file"
            )
        raise ModelLoadError(f"unknown model format {suffix or '(no suffix)'!r} for {str(path)!r}; expected .onnx, .tflite or .pt2")
    if _is_torch_module(model):
        return load_torch(model, example_inputs, input_names=input_names, output_names=output_names,
                          dynamic_batch=dynamic_batch, name=name)
    if hasattr(model, "SerializeToString") and hasattr(model, "graph"):
        return _from_onnx_proto(model, name=name or "model", source=None)
    raise ConfigError(
        f"load() takes a path to a .onnx/.tflite/.pt2 file, an onnx.ModelProto or a torch.nn.Module; got {type(model).__name__}"
    )


def _is_torch_module(obj) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _check_external_data(proto, base_dir: Path) -> None:
    """Refuse external-data locations that escape the model's folder (path traversal)."""
    from onnx.external_data_helper import _get_all_tensors

    root = base_dir.resolve()
    for tensor in _get_all_tensors(proto):
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise ModelLoadError(f"tensor {tensor.name!r} is stored externally but names no location")
        target = (root / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(root):
            raise ModelLoadError(
                f"tensor {tensor.name!r} points its external data at {location!r}, outside the model's folder "
                f"{str(root)!r}; refusing to read it. Keep external data files beside the model"
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file {location!r} for tensor {tensor.name!r} is missing beside the model")


def load_onnx(path: str | os.PathLike, *, name: str | None = None) -> ModelHandle:
    """Load an ONNX file (external data allowed only inside the model's folder), check it, infer shapes."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    raw = path.read_bytes()
    try:
        proto = onnx.load_from_string(raw)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{str(path)!r} is not a valid ONNX model (the protobuf cannot be parsed: truncated or not ONNX)") from e
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{str(path)!r} is not a valid ONNX model (it parsed to an empty graph: likely not an ONNX file)")
    _check_external_data(proto, path.parent)
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data
    from onnx.external_data_helper import _get_all_tensors

    if any(uses_external_data(t) for t in _get_all_tensors(proto)):
        load_external_data_for_model(proto, str(path.parent))
    return _from_onnx_proto(proto, name=name or path.stem, source=str(path), base_dir=path.parent)


def _from_onnx_proto(proto, *, name: str, source: str | None, source_format: str = "onnx",
                     torch_module=None, base_dir=None) -> ModelHandle:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as e:  # onnx raises ValidationError and others
        raise ModelLoadError(f"model {name!r} fails the ONNX checker: {str(e).splitlines()[0][:300]}") from e
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto  # shape inference is a help, not a requirement
    return ModelHandle.from_proto(inferred, name=name, source=source, source_format=source_format,
                                  torch_module=torch_module, base_dir=base_dir)


def load_torch(module, example_inputs, *, input_names=None, output_names=None, dynamic_batch=True,
               name: str | None = None, opset: int = 17) -> ModelHandle:
    """Export an ``nn.Module`` to ONNX once and keep the module as the trainable twin.

    The export is checked numerically: ONNX Runtime's outputs must match PyTorch's.
    """
    import torch

    if example_inputs is None:
        raise ConfigError("a torch.nn.Module needs example_inputs=(tensor, ...) to be traced; got None")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    input_names = list(input_names or ([f"input_{i}" for i in range(len(example_inputs))] if len(example_inputs) > 1 else ["input"]))
    try:
        module = module.eval()
    except NotImplementedError:  # modules unflattened from torch.export are always in eval form
        pass
    with torch.no_grad():
        reference = module(*example_inputs)
    refs = [reference] if isinstance(reference, torch.Tensor) else list(reference)
    output_names = list(output_names or (["output"] if len(refs) == 1 else [f"output_{i}" for i in range(len(refs))]))
    dynamic_axes = {n: {0: "batch"} for n in input_names + output_names} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        torch.onnx.export(module, example_inputs, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx.export failed for {type(module).__name__}: {str(e).splitlines()[0][:300]}") from e
    import onnx

    handle = _from_onnx_proto(onnx.load_from_string(buffer.getvalue()), name=name or type(module).__name__,
                              source=f"torch:{type(module).__name__}", source_format="torch", torch_module=module)
    got = handle.run([t.detach().cpu().numpy() for t in example_inputs])
    for r, g in zip(refs, got):
        err = float(np.max(np.abs(r.detach().cpu().numpy() - g))) if g.size else 0.0
        if err > 1e-4 * max(1.0, float(np.max(np.abs(g))) if g.size else 1.0):
            raise VerificationError(f"ONNX export of {type(module).__name__} deviates from PyTorch by {err:.3g} (tolerance 1e-4 relative)")
    return handle


def _frozen_module_class():
    import torch

    class _FrozenModule(torch.nn.Module):
        """Wraps a module unflattened from torch.export, which refuses train()/eval() calls."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True):
            return self

        def forward(self, *args):
            return self.inner(*args)

    return _FrozenModule


def _FrozenModule(inner):
    return _frozen_module_class()(inner)


def load_exported_program(path: str | os.PathLike, *, name: str | None = None) -> ModelHandle:
    """Load a ``torch.export`` archive (.pt2). It is a zip of tensors and a graph, not a pickle."""
    import torch

    path = Path(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{str(path)!r} is not a readable torch.export (.pt2) archive: {str(e).splitlines()[0][:200]}") from e
    module = _FrozenModule(program.module())
    example = program.example_inputs[0] if program.example_inputs else None
    if example is None:
        raise ModelLoadError(f"{str(path)!r} stores no example inputs; re-export it with torch.export.export(model, args)")
    return load_torch(module, example, name=name or path.stem, dynamic_batch=False)


def load_tflite(path: str | os.PathLike, *, name: str | None = None) -> ModelHandle:
    """Convert a float TFLite flatbuffer to ONNX, keeping the user's input layout (NHWC stays NHWC)."""
    from .tflite_import import tflite_to_onnx

    path = Path(path)
    proto = tflite_to_onnx(path)
    return _from_onnx_proto(proto, name=name or path.stem, source=str(path), source_format="tflite", base_dir=path.parent)
