"""ModelHandle: one model in flight, and the loaders that make one.

Every model is held as an ONNX graph (a PyTorch model is exported once, a TFLite model converted
once); the trainable PyTorch twin is kept when there is one. A handle is immutable from the
outside: passes return new handles, and ``proto()`` gives a fresh copy to edit.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import (ConfigError, DataError, EdgeOptError, ModelLoadError, UnsupportedModelError, VerificationError,
                     first_line)

# ONNX TensorProto element types -> numpy dtypes, for the types a model's inputs can carry.
_ONNX_TO_NUMPY = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of a graph input or output. A dynamic dimension is a str or None.

    ``batch_axis`` is the axis that holds the samples: 0 for most tensors, 1 for a recurrent
    state shaped (layers, batch, hidden), None when the tensor does not follow the batch (a
    scalar, or a detector's list of boxes whose length depends on the data).
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str
    batch_axis: int | None = 0

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    def concrete_shape(self, batch: int = 1, dims: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The shape with the dynamic batch dimension set to ``batch`` and every other dynamic
        dimension to ``dims[name]`` (a symbolic name such as "sequence") or 1."""
        dims = dims or {}
        return tuple(d if isinstance(d, int) else (batch if i == self.batch_axis else int(dims.get(d, 1)))
                     for i, d in enumerate(self.shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "batch_axis": self.batch_axis}


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


def batch_symbol(input_shapes: Sequence[Sequence[Dim]]) -> str | None:
    """The symbolic dimension that is the batch: one whose name says "batch" if any input has one
    (so a time-major ['sequence', 'batch', ...] input is read right), else the symbol most inputs
    carry on axis 0. None when no input has a symbolic batch."""
    from collections import Counter

    named = Counter(d for shape in input_shapes for d in shape if isinstance(d, str) and "batch" in d.lower())
    if named:
        return named.most_common(1)[0][0]
    firsts = Counter(shape[0] for shape in input_shapes if len(shape) and isinstance(shape[0], str))
    return firsts.most_common(1)[0][0] if firsts else None


def _with_batch_axes(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]):
    """Find each tensor's batch axis from the symbolic dimension names (see :func:`batch_symbol`).

    A tensor that carries the batch symbol off axis 0 (a GRU state (layers, batch, hidden)) has its
    batch there. When the model's batch is fixed, an output whose first axis is dynamic does not
    follow the batch (NMS detections).
    """
    symbol = batch_symbol([s.shape for s in inputs])
    fixed_batch = bool(inputs) and all(s.shape and isinstance(s.shape[0], int) for s in inputs)

    def axis(spec: TensorSpec, is_output: bool) -> int | None:
        if not spec.shape:
            return None
        if symbol is not None and symbol in spec.shape:
            return spec.shape.index(symbol)
        if is_output and fixed_batch and not isinstance(spec.shape[0], int):
            return None
        return 0

    return (tuple(replace(s, batch_axis=axis(s, False)) for s in inputs),
            tuple(replace(s, batch_axis=axis(s, True)) for s in outputs))


# Ops that pass values through unchanged (they change shape, type or select parts), followed from an
# input to the embedding table it indexes or the recurrent layer it initializes (a 2-layer LSTM
# slices its state per layer).
_PASSTHROUGH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Transpose",
                          "Slice", "Split", "Gather"})


def _input_roles(proto) -> dict[str, int | str]:
    """What each graph input is used for, as far as the graph says: ``n`` (an int) for indices into
    a constant table of ``n`` rows (token ids into an embedding), "state" for the initial state of a
    GRU/LSTM/RNN. Inputs with other uses are absent."""
    graph = proto.graph
    table_rows: dict[str, int] = {t.name: int(t.dims[0]) for t in graph.initializer if len(t.dims)}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and len(attr.t.dims):
                    table_rows[node.output[0]] = int(attr.t.dims[0])
    consumers: dict[str, list] = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, pos))
    roles: dict[str, int | str] = {}
    for value in graph.input:
        frontier, seen = [value.name], set()
        while frontier and value.name not in roles:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node, pos in consumers.get(name, []):
                if node.op_type == "Gather" and pos == 1 and node.input[0] in table_rows:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if axis == 0:
                        roles[value.name] = table_rows[node.input[0]]
                elif node.op_type in ("GRU", "LSTM", "RNN") and pos >= 5:  # initial_h, initial_c
                    roles[value.name] = "state"
                elif node.op_type in _PASSTHROUGH and pos == 0:
                    frontier.extend(o for o in node.output if o)
    return roles


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
        self.inputs, self.outputs = _with_batch_axes(
            _tensor_specs([i for i in proto.graph.input if i.name not in initializer_names]),
            _tensor_specs(proto.graph.output))
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

    def example_inputs(self, batch: int = 1, seed: int = 0, dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Valid inputs of the right shapes and dtypes (for benchmarking and smoke checks).

        Float inputs are seeded standard-normal noise, except recurrent states (initial_h/c of a
        GRU/LSTM/RNN), which are zeros. Integer inputs used as embedding indices (a Gather into a
        constant table) are random ids below the table's row count; other integer and bool inputs
        (attention masks, lengths) are ones. Dynamic dimensions other than the batch are 1 unless
        ``dims`` names them (``dims={"sequence": 128}``).
        """
        rng = np.random.default_rng(seed)
        if dims:
            symbols = {d for s in self.inputs for d in s.shape if isinstance(d, str)}
            unknown = sorted(set(dims) - symbols)
            if unknown:
                raise ConfigError(f"dims {unknown} are not dynamic dimensions of model {self.name!r}; "
                                  f"its dynamic dimensions are {sorted(symbols) or 'none'}")
        roles = _input_roles(self.proto())
        feeds = {}
        for spec in self.inputs:
            shape = spec.concrete_shape(batch, dims)
            dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx:") else np.float32
            role = roles.get(spec.name)
            if isinstance(role, int):
                feeds[spec.name] = rng.integers(0, role, size=shape).astype(dtype)
            elif role == "state":
                feeds[spec.name] = np.zeros(shape, dtype)
            elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                feeds[spec.name] = np.ones(shape, dtype)
            else:
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        return feeds

    def run(self, inputs: np.ndarray | Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the model once on ONNX Runtime; returns the outputs in graph order."""
        feeds = self._feeds(inputs)
        return self._run_session(None, feeds)

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray], batch_size: int = 64,
                outputs: Sequence[str | int] | None = None) -> list:
        """Run the model over many samples in batches; returns the outputs (all, or those named or
        indexed in ``outputs``), each with the samples on axis 0.

        ``x`` is an array (single-input models) or ``{input name: array}``, always with the samples
        on axis 0, whatever axis the model keeps its batch on (a GRU state (layers, batch, hidden)
        is given as (samples, layers, hidden)). Models with a fixed batch of k run k samples at a
        time (the last chunk padded by repeating its last sample). An output that does not have one
        entry per sample (a detector's boxes after NMS) comes back as a list of per-run arrays,
        one per sample when the model runs one sample at a time.
        """
        wanted = self._output_indices(outputs)
        names = [self.outputs[i].name for i in wanted]
        chunks: list[list[np.ndarray]] = [[] for _ in wanted]
        ragged = [False] * len(wanted)
        fixed = self._fixed_batch() is not None
        for chunk, count, step in self.feed_batches(x, batch_size):
            for j, out in enumerate(self._run_session(names, chunk)):
                axis = self.outputs[wanted[j]].batch_axis
                if axis is None or out.ndim <= axis or out.shape[axis] != (step if fixed else count):
                    ragged[j] = True
                else:
                    out = np.take(out, range(count), axis=axis) if fixed else out
                    out = np.moveaxis(out, axis, 0) if axis else out
                chunks[j].append(out)
        return [list(c) if ragged[j] else np.concatenate(c, axis=0) for j, c in enumerate(chunks)]

    def _fixed_batch(self) -> int | None:
        fixed = [s.shape[s.batch_axis] for s in self.inputs
                 if s.batch_axis is not None and isinstance(s.shape[s.batch_axis], int)]
        return fixed[0] if fixed else None

    def feed_batches(self, x: np.ndarray | Mapping[str, np.ndarray], batch_size: int = 64):
        """Yield ``(model-layout feeds, samples in it, batch size run)`` over ``x`` (samples on axis 0,
        as :meth:`predict` takes them): ``batch_size`` samples at a time, or the model's fixed batch,
        the last one then padded by repeating its last sample. Shared by ``predict`` and int8
        calibration (every input fed)."""
        arrays = self.feeds_from_samples(x)
        axes = {s.name: s.batch_axis for s in self.inputs}
        lengths = {k: v.shape[axes[k]] for k, v in arrays.items() if axes.get(k) is not None and v.ndim}
        if len(set(lengths.values())) > 1:
            raise DataError(f"inputs hold different numbers of samples {lengths}; give every input the same rows")
        n = next(iter(lengths.values()), 1)
        fixed = self._fixed_batch()
        step = fixed or batch_size
        if step < 1:
            raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
        for start in range(0, n, step):
            stop = min(start + step, n)
            chunk = {}
            for k, v in arrays.items():
                axis = axes.get(k)
                if axis is None:
                    chunk[k] = v
                    continue
                part = np.take(v, range(start, stop), axis=axis)
                if stop - start < step and fixed:  # a fixed batch must be filled
                    pad = np.take(part, [-1] * (step - (stop - start)), axis=axis)
                    part = np.concatenate([part, pad], axis=axis)
                chunk[k] = part
            yield chunk, stop - start, step

    def _run_session(self, names: list[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session().run(names, dict(feeds))
        except EdgeOptError:
            raise
        except Exception as e:  # ONNX Runtime's own untyped errors: bad index values, shapes it cannot broadcast
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise DataError(f"ONNX Runtime failed to run model {self.name!r} on inputs {shapes}: {first_line(e)}") from e

    def feeds_from_samples(self, x: np.ndarray | Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Model-layout feeds for ``run`` from samples-on-axis-0 arrays (moves each input's sample
        axis to the model's batch axis; checks names, shapes and dtypes)."""
        if isinstance(x, Mapping):
            raw = dict(x)
        elif isinstance(x, np.ndarray) or not isinstance(x, Sequence):
            raw = {self.inputs[0].name: x} if self.inputs else {}
        else:
            raw = {spec.name: arr for spec, arr in zip(self.inputs, x)}
        axes = {s.name: s.batch_axis for s in self.inputs}
        ranks = {s.name: len(s.shape) for s in self.inputs}
        moved = {}
        for key, arr in raw.items():
            arr = np.asarray(arr)
            axis = axes.get(key)
            if key in axes and axis is None and arr.ndim == ranks[key] + 1:
                # an input without a batch axis (a sample rate, a flag) given one value per row: the
                # rows must agree, and the model gets that one value
                if len(arr) and not np.all(arr == arr[:1]):
                    raise DataError(f"model input {key!r} has no batch axis (shape {tuple(self._spec(key).shape)}): "
                                    f"every row of the data must hold the same value; got {len(np.unique(arr))} "
                                    "different values. Split the data by that value and run each part")
                arr = arr[0] if len(arr) else arr.reshape(arr.shape[1:])
            moved[key] = np.moveaxis(arr, 0, axis) if axis and arr.ndim > axis else arr
        return self._feeds(moved)

    def _spec(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def output_name(self, output: str | int | None = None) -> str:
        """The name of one output given by name or index (None: the first); ConfigError if unknown."""
        return self.outputs[self._output_indices(0 if output is None else output)[0]].name

    def _output_indices(self, outputs: Sequence[str | int] | str | int | None) -> list[int]:
        """Output positions for names or indices (all outputs when None)."""
        if outputs is None:
            return list(range(len(self.outputs)))
        if isinstance(outputs, (str, int)):
            outputs = [outputs]
        names = [o.name for o in self.outputs]
        found = []
        for o in outputs:
            if isinstance(o, int) and not isinstance(o, bool) and -len(names) <= o < len(names):
                found.append(o % len(names))
            elif isinstance(o, str) and o in names:
                found.append(names.index(o))
            elif isinstance(o, str) and o.lstrip("-").isdigit() and -len(names) <= int(o) < len(names):
                found.append(int(o) % len(names))
            else:
                raise ConfigError(f"output {o!r} is not an output of model {self.name!r}; "
                                  f"its outputs are {names} (or an index 0..{len(names) - 1})")
        return found

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
                isinstance(d, int) and d != a and i != spec.batch_axis for i, (d, a) in enumerate(zip(spec.shape, arr.shape))
            ):
                where = "the first axis" if spec.batch_axis == 0 else f"axis {spec.batch_axis}"
                raise DataError(
                    f"data shape {tuple(arr.shape)} does not fit model input {spec.name!r} of shape "
                    f"{tuple(spec.shape)} ({where} is the batch); reshape or re-layout the data "
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


def make_session(model: bytes | str | os.PathLike, *, threads: int = 1, optimize: bool = True,
                 profile_prefix: str | os.PathLike | None = None):
    """An ONNX Runtime CPU session with a fixed thread count (measurements must be repeatable).

    ``optimize=False`` turns ONNX Runtime's graph optimizations off (every original tensor stays
    observable). ``profile_prefix`` turns ONNX Runtime's profiler on; the JSON trace is written to
    ``<profile_prefix>_<timestamp>.json`` and ``session.end_profiling()`` returns its path.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # 4 (fatal only): a failed run raises, and we turn that into a typed error with ORT's message;
    # its own error log would print the same text a second time, raw, on stderr
    so.log_severity_level = 4
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own untyped exceptions
        raise UnsupportedModelError(f"ONNX Runtime cannot load this model: {first_line(e)}") from e


def check_loads_isolated(model: bytes, what: str, *, timeout: float = 120.0) -> None:
    """Create the ONNX Runtime session for ``model`` in a child process first; raise
    UnsupportedModelError if the child crashes or fails.

    ONNX Runtime 1.32 dies with SIGSEGV (no Python exception, so the whole optimizer run is lost)
    creating sessions for some graphs that its own float16 converter emits (measured: a transformer
    encoder, converted to fp16 after ORT's own fusions or with its shape hints dropped). A child
    process costs about 0.35 s; passes whose output can trip such crashes call this before the
    model is run in process.
    """
    import subprocess
    import sys
    import tempfile

    code = "import sys; from edgeopt.model import make_session; make_session(sys.argv[1])"
    with tempfile.TemporaryDirectory(prefix="edgeopt-loadcheck-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        try:
            # the child imports this very edgeopt, installed or not
            here = str(Path(__file__).resolve().parents[1])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
            done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise UnsupportedModelError(f"{what}: ONNX Runtime did not finish loading the result within {timeout:g} s") from e
    if done.returncode < 0:
        raise UnsupportedModelError(f"{what}: ONNX Runtime crashes (signal {-done.returncode}) loading the result; "
                                    "it was not emitted")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        last = last.split("ONNX Runtime cannot load this model: ", 1)[-1]  # the child's own make_session error
        raise UnsupportedModelError(f"{what}: ONNX Runtime cannot load the result: {last}")


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


def load_with_data(model: Any, data) -> ModelHandle:
    """``load(model)``, except that an ``nn.Module`` given without example inputs is traced on the
    first two rows of ``data`` (a Dataset; several inputs in the data's order), so
    ``edgeopt.optimize(module, data=...)`` works without them."""
    if not _is_torch_module(model):
        return load(model)
    import torch

    rows = data.take(0, min(2, len(data))).x
    arrays = list(rows.values()) if isinstance(rows, dict) else [rows]
    names = list(rows) if isinstance(rows, dict) else None
    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
    try:
        return load(model, example_inputs=example[0] if len(example) == 1 else example, input_names=names)
    except EdgeOptError:
        raise
    except Exception as e:  # the module's own forward rejects the rows (dtype, shape)
        shapes = [f"{a.dtype}{list(a.shape[1:])}" for a in arrays]
        raise ModelLoadError(
            f"tracing the nn.Module on the data's first rows failed ({type(e).__name__}: {first_line(e)}); the rows "
            f"are {', '.join(shapes)} per sample. Give data the module accepts (e.g. float32, scaled as in "
            "training), or trace it yourself: edgeopt.load(module, example_inputs=...)") from e


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


def _negative_dims_to_symbols(proto):
    """Graph input/output dimensions written as -1 (paddle2onnx and some converters do this for
    "dynamic"; ONNX says a dim_value is >= 0) become named dynamic dimensions: axis 0 the batch,
    others ``<tensor>_dim<axis>``. Returns a copy when something changed (the caller's proto is
    left alone), else ``proto``. Without this the batch of a PP-OCR classifier (``[-1, 3, ?, ?]``)
    was a size of -1 and example inputs failed."""
    def values(p):
        return list(p.graph.input) + list(p.graph.output)

    if not any(d.HasField("dim_value") and d.dim_value < 0 for v in values(proto) for d in v.type.tensor_type.shape.dim):
        return proto
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    symbols = {d.dim_param for v in values(fixed) for d in v.type.tensor_type.shape.dim if d.dim_param}
    batch = next((s for s in ("batch", "N", "batch_size") if s in symbols), "batch")
    for value in values(fixed):
        for axis, d in enumerate(value.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = batch if axis == 0 else f"{value.name}_dim{axis}"  # clears dim_value (a oneof)
    return fixed


def _from_onnx_proto(proto, *, name: str, source: str | None, source_format: str = "onnx",
                     torch_module=None, base_dir=None) -> ModelHandle:
    import onnx

    proto = _negative_dims_to_symbols(proto)

    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as e:  # onnx raises ValidationError and others
        ordered = _topologically_sorted(proto) if "topologically sorted" in str(e) else None
        if ordered is None:
            raise ModelLoadError(f"model {name!r} fails the ONNX checker: {first_line(e)}") from e
        proto = ordered
        try:
            onnx.checker.check_model(proto, full_check=False)
        except Exception as again:
            raise ModelLoadError(f"model {name!r} fails the ONNX checker: {first_line(again)}") from again
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto  # shape inference is a help, not a requirement
    return ModelHandle.from_proto(inferred, name=name, source=source, source_format=source_format,
                                  torch_module=torch_module, base_dir=base_dir)


def _topologically_sorted(proto):
    """A copy of ``proto`` with its top-level nodes in dependency order, or None if there is none
    (a cycle or an input nobody produces). Some tools emit valid graphs out of order (ONNX
    Runtime's float16 converter appends input Casts after their consumers); the checker refuses them."""
    import onnx

    graph = proto.graph
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ready |= {t.values.name for t in graph.sparse_initializer}
    pending = list(graph.node)
    ordered = []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            return None
        runnable_ids = {id(n) for n in runnable}
        pending = [n for n in pending if id(n) not in runnable_ids]
        ordered.extend(runnable)
        for n in runnable:
            ready.update(n.output)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    return out


def load_torch(module, example_inputs, *, input_names=None, output_names=None, dynamic_batch=True,
               name: str | None = None, opset: int = 17) -> ModelHandle:
    """Export an ``nn.Module`` to ONNX once and keep the module as the trainable twin.

    The export is checked numerically: ONNX Runtime's outputs must match PyTorch's. With
    ``dynamic_batch`` each tensor's batch axis is the one whose size is the first input's batch
    (axis 0 if it matches, so a GRU state (layers, batch, hidden) gets axis 1); the exported graph
    is then also checked at twice that batch, and exported with fixed shapes (with a warning) if
    that fails, e.g. because the module hard-codes its batch size. Give example inputs whose batch
    size differs from every other dimension (2 or 3 rather than 1) so the batch axes are plain.
    """
    import torch

    if example_inputs is None:
        raise ConfigError("a torch.nn.Module needs example_inputs=(tensor, ...) to be traced; got None")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in example_inputs):
        raise ConfigError("example_inputs must be a tensor or a tuple of tensors; got "
                          + ", ".join(type(t).__name__ for t in example_inputs))
    input_names = list(input_names or ([f"input_{i}" for i in range(len(example_inputs))] if len(example_inputs) > 1 else ["input"]))
    try:
        module = module.eval()
    except NotImplementedError:  # modules unflattened from torch.export are always in eval form
        pass
    with torch.no_grad():
        refs = _flatten_tensors(module(*example_inputs))
    output_names = list(output_names or (["output"] if len(refs) == 1 else [f"output_{i}" for i in range(len(refs))]))
    batch = int(example_inputs[0].shape[0]) if example_inputs and example_inputs[0].dim() else None
    if dynamic_batch and batch is not None:
        in_axes = [_batch_axis_by_size(t, batch) for t in example_inputs]
        out_axes = [_batch_axis_by_size(t, batch) for t in refs]
        dynamic_axes = {n: {a: "batch"} for n, a in zip(input_names + output_names, in_axes + out_axes) if a is not None}
        handle = _export_checked(module, example_inputs, refs, input_names, output_names, dynamic_axes, name, opset)
        problem = _dynamic_batch_problem(module, handle, example_inputs, in_axes)
        if problem is None:
            return handle
        import warnings

        warnings.warn(f"{type(module).__name__} does not run at a batch other than {batch} once exported "
                      f"({problem}); exporting it with a fixed batch of {batch}", stacklevel=2)
    return _export_checked(module, example_inputs, refs, input_names, output_names, None, name, opset)


def _flatten_tensors(value) -> list:
    """Module outputs as a flat list of tensors, in the order torch.onnx.export emits them."""
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flatten_tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _flatten_tensors(v)]
    return [value] if hasattr(value, "detach") else []  # None and Python scalars are not graph outputs


def _batch_axis_by_size(tensor, batch: int) -> int | None:
    if tensor.dim() == 0:
        return None
    if tensor.shape[0] == batch:
        return 0
    return next((i for i, d in enumerate(tensor.shape) if d == batch), None)


def _deviation(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Largest absolute difference and the tolerance it must stay under (1e-4 relative)."""
    if reference.shape != got.shape:
        return math.inf, 0.0
    if not got.size:
        return 0.0, 1.0
    r, g = reference.astype(np.float64), got.astype(np.float64)
    return float(np.max(np.abs(r - g))), 1e-4 * max(1.0, float(np.max(np.abs(g))))


def _export_checked(module, example_inputs, refs, input_names, output_names, dynamic_axes, name, opset) -> ModelHandle:
    import onnx
    import torch

    buffer = io.BytesIO()
    try:
        torch.onnx.export(module, example_inputs, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
    except Exception as e:
        raise UnsupportedModelError(f"torch.onnx.export failed for {type(module).__name__}: {first_line(e)}") from e
    handle = _from_onnx_proto(onnx.load_from_string(buffer.getvalue()), name=name or type(module).__name__,
                              source=f"torch:{type(module).__name__}", source_format="torch", torch_module=module)
    got = _run_verbatim(handle, [t.detach().cpu().numpy() for t in example_inputs])
    for r, g in zip(refs, got):
        err, tolerance = _deviation(r.detach().cpu().numpy(), g)
        if err > tolerance:
            raise VerificationError(f"ONNX export of {type(module).__name__} deviates from PyTorch by {err:.3g} (tolerance 1e-4 relative)")
    return handle


def _run_verbatim(handle: ModelHandle, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run with the arrays exactly as traced (torch.onnx.export drops inputs the graph never reads)."""
    names = [s.name for s in handle.inputs]
    feeds = handle._feeds(dict(zip(names, arrays)) if len(names) == len(arrays) else arrays)
    try:
        return handle.session().run(None, feeds)
    except Exception as e:  # ONNX Runtime's own untyped errors
        raise UnsupportedModelError(f"the exported graph of {handle.name!r} does not run on ONNX Runtime: {first_line(e)}") from e


def _dynamic_batch_problem(module, handle: ModelHandle, example_inputs, in_axes) -> str | None:
    """Why the exported graph fails at a different batch (twice the example's), or None if it matches PyTorch."""
    import torch

    bigger = tuple(t if a is None else torch.cat([t, t.flip(a)], dim=a) for t, a in zip(example_inputs, in_axes))
    try:
        with torch.no_grad():
            refs = _flatten_tensors(module(*bigger))
        got = _run_verbatim(handle, [t.detach().cpu().numpy() for t in bigger])
    except Exception as e:
        return first_line(e, 200)
    for r, g in zip(refs, got):
        err, tolerance = _deviation(r.detach().cpu().numpy(), g)
        if err > tolerance:
            return f"outputs differ from PyTorch by {err:.3g}" if np.isfinite(err) else f"output shape {g.shape} != {tuple(r.shape)}"
    return None


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
        raise ModelLoadError(f"{str(path)!r} is not a readable torch.export (.pt2) archive: {first_line(e, 200)}") from e
    module = _FrozenModule(program.module())
    example = program.example_inputs[0] if program.example_inputs else None
    if example is None:
        raise ModelLoadError(f"{str(path)!r} stores no example inputs; re-export it with torch.export.export(model, args)")
    return load_torch(module, example, name=name or path.stem, dynamic_batch=False)


def load_tflite(path: str | os.PathLike, *, name: str | None = None) -> ModelHandle:
    """Convert a TFLite flatbuffer to ONNX, keeping the user's input layout (NHWC stays NHWC).

    Float and hybrid (int8-weight) models become float graphs; fully int8 models become QDQ graphs
    with float inputs and outputs. See :mod:`edgeopt.tflite_import`.
    """
    from .tflite_import import tflite_to_onnx

    path = Path(path)
    proto = tflite_to_onnx(path)
    return _from_onnx_proto(proto, name=name or path.stem, source=str(path), source_format="tflite", base_dir=path.parent)
