"""The trainable PyTorch twin of a model, and the way back to a verified ONNX handle.

A model loaded from an ``nn.Module`` already has its twin. An ONNX model gets one by conversion
with onnx2torch, followed by two small graph rewrites that make the twin *trainable and prunable*
(onnx2torch keeps constant tensors as buffers, so a ``MatMul`` with a constant weight would be
frozen, and a ``Reshape`` to a constant ``[-1, 64]`` would break as soon as channels are pruned):

- ``MatMul(x, W) [+ Add(b)]`` with constant 2-D ``W`` becomes an ``nn.Linear``;
- ``Reshape(x, [-1, C])`` of an ``N x C x 1 x 1`` tensor becomes ``nn.Flatten(1)``.

Every conversion is checked against ONNX Runtime before any training happens
(:data:`TOLERANCE`, max abs error relative to the output scale). The input layout is untouched:
the MLPerf Tiny graphs take NHWC and transpose inside, and so does their twin.

onnx2torch imports torchvision in its NonMaxSuppression and RoiAlign converters only. torchvision
is deliberately not installed (pip would replace the pinned CPU torch), so during import a stub
``torchvision`` is placed in ``sys.modules`` and removed again; models that use those two ops are
refused with :class:`~edgeopt.errors.UnsupportedModelError` before conversion.
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from typing import Any

import numpy as np

from .errors import MissingDependencyError, UnsupportedModelError, VerificationError
from .model import ModelHandle, PassRecord

#: max |twin - onnxruntime| allowed, relative to max(1, max |output|)
TOLERANCE = 1e-4
_TORCHVISION_OPS = frozenset({"NonMaxSuppression", "RoiAlign"})


def _torchvision_stub() -> dict[str, types.ModuleType]:
    def unsupported(*_args, **_kwargs):
        raise UnsupportedModelError("NonMaxSuppression/RoiAlign need torchvision, which edgeopt does not install "
                                    "(it would replace the pinned CPU torch); such models cannot get a PyTorch twin")

    package = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.roi_align = ops.nms = ops.box_convert = unsupported
    package.ops = ops
    return {"torchvision": package, "torchvision.ops": ops}


def _import_onnx2torch():
    """Import onnx2torch's ``convert`` without torchvision (stub present only during the import)."""
    if "onnx2torch" in sys.modules:
        from onnx2torch import convert

        return convert
    # onnx2torch's Slice indexes with a list (torch warns on every twin that slices, once per trial in a
    # search, on the user's terminal); the indexing is correct for the torch we pin. Only that message.
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning, module="onnx2torch")
    stub = _torchvision_stub()
    saved = {name: sys.modules.get(name) for name in stub}
    real_torchvision = saved["torchvision"] is not None
    if not real_torchvision:
        sys.modules.update(stub)
    try:
        from onnx2torch import convert
    except ImportError as e:
        raise MissingDependencyError(
            "onnx2torch is needed to train an ONNX model; install it without its torchvision dependency: "
            "pip install --no-deps onnx2torch") from e
    finally:
        if not real_torchvision:
            for name in stub:
                sys.modules.pop(name, None)
    return convert


# ------------------------------------------------------------------------------------------------
# ONNX -> torch
# ------------------------------------------------------------------------------------------------

def to_torch(model: ModelHandle, *, verify_batch: int = 2, seed: int = 0):
    """A fresh trainable ``nn.Module`` equivalent to ``model`` (deep copy of the twin, or a conversion).

    The conversion is verified on random inputs against ONNX Runtime; deviations above
    :data:`TOLERANCE` raise :class:`VerificationError`.
    """
    if model.torch_module is not None:
        return copy.deepcopy(model.torch_module)
    proto = _fold_decomposed_norms(model)
    used = {n.op_type for n in proto.graph.node} & _TORCHVISION_OPS
    if used:
        raise UnsupportedModelError(f"model uses {sorted(used)}, which need torchvision; edgeopt cannot train it in PyTorch")
    convert = _import_onnx2torch()
    import torch

    try:
        graph_module = convert(proto)
    except Exception as e:  # onnx2torch raises NotImplementedError/KeyError for ops it lacks
        raise UnsupportedModelError(f"onnx2torch cannot convert this model: {type(e).__name__}: {str(e)[:300]}") from e
    feeds = model.example_inputs(batch=verify_batch, seed=seed)
    example = tuple(torch.from_numpy(feeds[s.name]) for s in model.inputs)
    graph_module = _make_trainable(graph_module, example)
    verify(graph_module, model, feeds, what="onnx2torch conversion")
    return graph_module


def _fold_decomposed_norms(model: ModelHandle):
    """The graph to convert: with a BatchNorm that the exporter wrote out as ``Mul``/``Add`` by
    constants after a layer (Keras exports) folded into that layer first, by the ``fold`` pass.
    Torch-Pruning cannot prune such a scale with its layer: pruning the MLPerf AD autoencoder
    failed with "size of tensor a (120) must match ... b (128)". Other graphs convert as they are."""
    proto = model.proto()
    weighted = {o for n in proto.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") for o in n.output}
    biased = {o for n in proto.graph.node if n.op_type == "Add" and set(n.input) & weighted for o in n.output}
    constants = {i.name for i in proto.graph.initializer}
    if not any(n.op_type == "Mul" and set(n.input) & (weighted | biased) and set(n.input) & constants
               for n in proto.graph.node):
        return proto
    from .errors import EdgeOptError
    from .passes.fold import Fold

    try:
        return Fold()(model).model.proto()
    except EdgeOptError:
        return proto


def verify(module, model: ModelHandle, feeds: dict[str, np.ndarray], *, what: str) -> float:
    """Max abs difference of ``module`` vs ``model`` on ONNX Runtime; raises beyond :data:`TOLERANCE`."""
    import torch

    reference = model.run(feeds)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[s.name]) for s in model.inputs])
    module.train(was_training)
    got = [got] if isinstance(got, torch.Tensor) else list(got)
    worst = 0.0
    for r, g in zip(reference, got):
        g = g.detach().numpy()
        if r.shape != g.shape:
            raise VerificationError(f"{what}: output shape {g.shape} differs from ONNX Runtime's {r.shape}")
        err = float(np.max(np.abs(r - g))) if r.size else 0.0
        scale = max(1.0, float(np.max(np.abs(r))) if r.size else 1.0)
        if not err <= TOLERANCE * scale:
            raise VerificationError(f"{what}: PyTorch deviates from ONNX Runtime by {err:.3g} "
                                    f"(tolerance {TOLERANCE:g} x {scale:.3g})")
        worst = max(worst, err)
    return worst


def _constant(graph_module, node):
    """The tensor behind a ``get_attr`` node, or None."""
    if node is None or getattr(node, "op", None) != "get_attr":
        return None
    target: Any = graph_module
    for part in node.target.split("."):
        target = getattr(target, part)
    return target


def _make_trainable(graph_module, example: tuple):
    """Rewrite constant-weight MatMul(+Add) into nn.Linear and flatten-like Reshapes into nn.Flatten."""
    import torch
    from torch import nn
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(graph_module).propagate(*example)
    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    counter = 0
    # MatMuls first: the shape metadata they read is lost on nodes the Reshape rewrite replaces.
    for node in [n for n in graph.nodes if n.op == "call_module" and type(modules[n.target]).__name__ == "OnnxMatMul"]:
        if len(node.args) == 2:
            weight = _constant(graph_module, node.args[1])
            meta = node.args[0].meta.get("tensor_meta") if hasattr(node.args[0], "meta") else None
            if weight is None or weight.ndim != 2 or meta is None or len(meta.shape) != 2:
                continue
            bias_node, bias = None, None
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and type(modules[users[0].target]).__name__ == "OnnxBinaryMathOperation":
                user = users[0]
                other = user.args[1] if user.args[0] is node else user.args[0]
                candidate = _constant(graph_module, other)
                if getattr(modules[user.target], "math_op_function", None) is torch.add and candidate is not None \
                        and candidate.ndim == 1 and candidate.shape[0] == weight.shape[1]:
                    bias_node, bias = user, candidate
            linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.T)
                if bias is not None:
                    linear.bias.copy_(bias)
            counter += 1
            name = f"edgeopt_linear_{counter}"
            graph_module.add_submodule(name, linear)
            with graph.inserting_after(bias_node or node):
                new = graph.call_module(name, (node.args[0],))
            (bias_node or node).replace_all_uses_with(new)
            if bias_node is not None:
                graph.erase_node(bias_node)
            graph.erase_node(node)
    for node in [n for n in graph.nodes if n.op == "call_module" and type(graph_module.get_submodule(n.target)).__name__ == "OnnxReshape"]:
        if len(node.args) == 2:
            shape = _constant(graph_module, node.args[1])
            meta_in = node.args[0].meta.get("tensor_meta") if hasattr(node.args[0], "meta") else None
            if shape is None or meta_in is None or shape.numel() != 2:
                continue
            in_shape = tuple(meta_in.shape)
            # A reshape to [-1, C] of N x C x 1 x 1 is a flatten in either layout; written as one, it
            # follows the channel count when pruning changes C.
            if len(in_shape) >= 3 and all(d == 1 for d in in_shape[2:]) and int(shape[1]) == in_shape[1] \
                    and int(shape[0]) in (-1, 0, in_shape[0]):
                counter += 1
                name = f"edgeopt_flatten_{counter}"
                graph_module.add_submodule(name, nn.Flatten(1))
                with graph.inserting_after(node):
                    new = graph.call_module(name, (node.args[0],))
                node.replace_all_uses_with(new)
                graph.erase_node(node)
    graph.eliminate_dead_code()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


# ------------------------------------------------------------------------------------------------
# torch -> ONNX
# ------------------------------------------------------------------------------------------------

def export(module, like: ModelHandle, record: PassRecord | None, *, batch: int = 2, seed: int = 0) -> ModelHandle:
    """Export a trained twin back to ONNX with ``like``'s input/output names; verified by ``load_torch``.

    Returns a handle derived from ``like`` (history + ``record``) that keeps ``module`` as its twin.
    """
    import torch

    from .model import load_torch

    feeds = like.example_inputs(batch=batch, seed=seed)
    example = tuple(torch.from_numpy(feeds[s.name]) for s in like.inputs)
    first = like.inputs[0].shape[0] if like.inputs and like.inputs[0].shape else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about onnx2torch's shape handling
        handle = load_torch(module, example, input_names=[s.name for s in like.inputs],
                            output_names=[s.name for s in like.outputs], dynamic_batch=not isinstance(first, int),
                            name=like.name)
    return like.derive(handle.proto(), record, torch_module=module)


def example_input(model: ModelHandle, batch: int = 1, seed: int = 0) -> tuple:
    """Random torch inputs of ``model``'s shapes (for tracing and dependency graphs)."""
    import torch

    feeds = model.example_inputs(batch=batch, seed=seed)
    return tuple(torch.from_numpy(feeds[s.name]) for s in model.inputs)
