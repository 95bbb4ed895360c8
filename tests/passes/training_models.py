"""Small real models and data for the training-pass tests (kept fast: tiny nets, a few hundred rows)."""

from __future__ import annotations

import numpy as np

FAST = {"progress": False, "batch_size": 64}


def mnist_rows(mnist_path, start: int, stop: int):
    """Rows [start, stop) of a fixed shuffle of the real mnist_5k CSV (the file is sorted by digit), pixels 0..1."""
    from dataclasses import replace

    from edgeopt.data import Preprocess, load_data

    data = load_data(mnist_path, preprocess=Preprocess(scale=1 / 255))
    order = np.random.default_rng(0).permutation(len(data))[start:stop]
    return replace(data, x=data.x[order], y=data.y[order], name=f"mnist_shuffled[{start}:{stop}]", rows=None)


def trained_mlp(mnist_path, hidden=(64, 32), epochs: int = 3, seed: int = 0):
    """A small MLP trained for a few epochs on MNIST rows 0-999 (a real, if weak, classifier)."""
    import torch
    from torch import nn

    import edgeopt
    from edgeopt.training import FineTune, fine_tune

    torch.manual_seed(seed)
    layers, width = [], 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, 10))
    train = mnist_rows(mnist_path, 0, 1000)
    # From scratch: no per-tensor LR cap (it protects trained weights during short recoveries).
    fine_tune(net, train, config=FineTune(epochs=epochs, lr=3e-3, augment="none", holdout=0.0, max_relative_step=1.0,
                                          **FAST), seed=seed)
    return edgeopt.load(net, example_inputs=torch.zeros(1, 784), name="mlp")


def kws_ctx(kws_data, *, train_rows=(0, 256), tune_rows=(256, 384), **options):
    """A PassContext with real Speech Commands MFCC rows (seeded random picks: the file is sorted by class)."""
    from edgeopt.passes.base import PassContext

    rng = np.random.default_rng(0)
    picks = rng.permutation(len(kws_data))[: tune_rows[1]]
    train = kws_data.take(0, len(kws_data))
    from dataclasses import replace

    def subset(a, b):
        idx = np.sort(picks[a:b])
        return replace(train, x=train.x[idx], y=train.y[idx], name=f"kws[{a}:{b}]")

    return PassContext(calib=subset(*train_rows), train=subset(*train_rows), tune=subset(*tune_rows),
                       options={"fine_tune": {**FAST, **options}})


def onnx_weight_arrays(handle, min_dims: int = 2) -> dict:
    """Float weight initializers (>= 2-D) of a handle's ONNX graph."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in handle.proto().graph.initializer
            if i.data_type == 1 and len(i.dims) >= min_dims}
