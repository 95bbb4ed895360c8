"""Bugs real searches ran into, each reproduced on the real DS-CNN / Speech Commands data."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from edgeopt.errors import ConfigError
from edgeopt.passes import PassContext, make_pass
from edgeopt.search import SearchSpace


@pytest.fixture(scope="module")
def kws_ctx(kws_data):
    return PassContext(calib=kws_data.splits(calib="0:500")["calib"])


@pytest.fixture(scope="module")
def folded_equalized(dscnn, kws_ctx):
    folded = make_pass("fold")(dscnn, kws_ctx).model
    return make_pass("equalize")(folded, kws_ctx).model


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_with_a_sample_count_not_a_multiple_of_the_batch(folded_equalized, kws_ctx, kws_data, method):
    # 100 rows used to be read as batches 32+32+32+4: ORT's histogram collectors stacked the ragged
    # batches and failed with "setting an array element with a sequence"
    result = make_pass("quantize.int8", {"calibration": method, "samples": 100})(folded_equalized, kws_ctx)
    assert result.stats["calibration_rows"] == [0, 100]
    held_out = kws_data.x[3000:3300]
    agree = np.mean(result.model.predict(held_out)[0].argmax(1) == folded_equalized.predict(held_out)[0].argmax(1))
    assert agree > 0.9
    assert np.all(np.isfinite(result.model.predict(held_out)[0]))


def test_fold_without_symbolic_shape_inference(dscnn, kws_ctx):
    # ORT's quant_pre_process given a ModelProto with skip_symbolic_shape=True moved the weights
    # to external data it never wrote: "ValidationError ... should be stored in .../foo.bin"
    result = make_pass("fold", {"symbolic_shapes": False})(dscnn, kws_ctx)
    assert result.stats["nodes_after"] < result.stats["nodes_before"]   # the ORT optimizer really ran
    assert result.stats["max_abs_error"] <= 1e-5


def test_bias_correction_on_qoperator_is_refused_by_validate_and_never_proposed():
    with pytest.raises(ConfigError, match="bias_correction"):
        make_pass("quantize.int8", {"format": "qoperator", "bias_correction": True})
    space = SearchSpace.from_names(["quantize.int8"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(200):
        trial = study.ask()
        recipe = space.suggest(trial)
        study.tell(trial, 0.0)
        if not recipe.passes:   # use__quantize = "none"
            continue
        step = recipe.passes[0]
        step.validate()
        seen.add((step.format, step.bias_correction))
        if step.calibration != "percentile":
            assert "quantize_int8__percentile" not in trial.params   # no trial spent on a value with no effect
    assert seen == {("qdq", False), ("qdq", True), ("qoperator", False)}


def test_clustering_a_layer_pruned_to_all_zeros(dscnn, kws_data):
    # prune.magnitude at ~92% global sparsity left a DS-CNN layer all zero; cluster.weights then ran
    # k-means on no values: "zero-size array to reduction operation maximum"
    from onnx import numpy_helper

    from edgeopt.model import ModelHandle

    proto = dscnn.proto()
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    init = next(i for i in proto.graph.initializer if i.name in conv_weights)
    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    zeroed = ModelHandle(proto.SerializeToString(), name="dscnn-one-layer-zero")
    ctx = PassContext(calib=kws_data.splits(calib="0:200")["calib"], seed=0)
    result = make_pass("cluster.weights", {"clusters": 8, "epochs": 0, "codebook": "int8"})(zeroed, ctx)
    assert min(result.stats["distinct_values"].values()) == 1          # the zero layer stays exactly zero
    assert max(result.stats["distinct_values"].values()) <= 8
    assert np.all(np.isfinite(result.model.predict(kws_data.x[3000:3100])[0]))
