"""Small real models and data shared by the PTQ pass tests (kept tiny: the default suite must stay fast)."""

from __future__ import annotations

import numpy as np


def kws_ctx(kws_data, rows: int = 64):
    from edgeopt.passes import PassContext

    calib = kws_data.take(0, rows, name="kws:calib")
    return PassContext(calib=calib, tune=calib, seed=0)


def conv_bn_model():
    """Conv -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten, built with onnx.helper
    (PyTorch's exporter already folds BatchNorm, so it cannot make this test model)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import edgeopt

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, 8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, 8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    model = helper.make_model(helper.make_graph(nodes, "convbn", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return edgeopt.load(model)


def mlp_model(width: int = 256):
    import torch

    import edgeopt

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, 10)).eval()
    return edgeopt.load(net, example_inputs=torch.zeros(1, 64))


def no_weights_model():
    """A graph with no Conv/Gemm/MatMul: int8 has nothing to quantize."""
    import onnx
    from onnx import TensorProto, helper

    import edgeopt

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)],
                              "noweights", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return edgeopt.load(model)


def random_rows(model, n: int, seed: int = 0) -> np.ndarray:
    spec = model.inputs[0]
    shape = (n,) + tuple(d if isinstance(d, int) else 1 for d in spec.shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
