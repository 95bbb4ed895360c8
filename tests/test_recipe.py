"""The Pass contract (base-class checks) and Recipe YAML round trip, with a small real pass."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeopt.errors import ConfigError, PassError
from edgeopt.passes.base import Choice, FloatRange, Pass, PassContext, PassResult, run_passes
from edgeopt.recipe import Recipe


class RoundWeights(Pass):
    """A real graph transform: round every float initializer to a number of decimals."""

    name: ClassVar[str] = "test.round_weights"

    def __init__(self, *, decimals: int = 2, mode: str = "nearest"):
        self.decimals = decimals
        self.mode = mode

    @classmethod
    def search_space(cls):
        return {"mode": Choice(("nearest", "floor")), "decimals": FloatRange(0, 4)}

    def validate(self):
        super().validate()
        if not isinstance(self.decimals, int) or not 0 <= self.decimals <= 6:
            raise ConfigError(f"{self.name}: 'decimals' must be an integer in 0..6; got {self.decimals!r}")

    def run(self, model, ctx):
        proto = model.proto()
        f = np.round if self.mode == "nearest" else np.floor
        for init in proto.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32:
                scale = 10.0 ** self.decimals
                init.CopyFrom(numpy_helper.from_array((f(arr * scale) / scale).astype(np.float32), init.name))
        return PassResult(model.derive(proto, self.record()), {"decimals": self.decimals})


class MutatesInput(RoundWeights):
    name: ClassVar[str] = "test.mutates"

    def run(self, model, ctx):
        model._bytes = b"x" + model._bytes  # break the promise on purpose
        return PassResult(model, {})


class Crashes(RoundWeights):
    name: ClassVar[str] = "test.crashes"

    def run(self, model, ctx):
        raise ZeroDivisionError("boom")


def test_pass_produces_new_handle_with_history(dscnn):
    result = RoundWeights(decimals=1)(dscnn, PassContext())
    assert result.model is not dscnn and result.model.history[-1].name == "test.round_weights"
    w = [numpy_helper.to_array(i) for i in result.model.proto().graph.initializer if i.data_type == 1]
    assert all(np.allclose(a * 10, np.round(a * 10), atol=1e-3) for a in w)


def test_base_class_catches_mutation_and_wraps_failures(dscnn):
    model = dscnn.derive(dscnn.proto())
    with pytest.raises(PassError, match="mutated its input"):
        MutatesInput()(model, PassContext())
    with pytest.raises(PassError, match=r"test.crashes failed .*ZeroDivisionError: boom") as info:
        Crashes()(dscnn, PassContext())
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_bad_params_are_config_errors_naming_the_parameter(dscnn):
    with pytest.raises(ConfigError, match="'mode' must be one of"):
        RoundWeights(mode="up")(dscnn)
    with pytest.raises(ConfigError, match="no parameter"):
        RoundWeights().set_params(rounding=3)


def test_recipe_yaml_round_trip_and_set_params(monkeypatch):
    from edgeopt.passes import base

    monkeypatch.setitem(base._REGISTRY, "test.round_weights", RoundWeights)
    base._discover()
    recipe = Recipe.of([RoundWeights(decimals=3), RoundWeights(decimals=1, mode="floor")], seed=7,
                       data={"calib": [0, 500]})
    assert [n for n, _ in recipe.steps] == ["test_round_weights", "test_round_weights_2"]
    again = Recipe.from_yaml(recipe.to_yaml())
    assert again.passes == recipe.passes and again.seed == 7 and again.data == {"calib": [0, 500]}
    changed = recipe.set_params(test_round_weights_2__decimals=4)
    assert changed.passes[1].decimals == 4 and recipe.passes[1].decimals == 1
    assert changed.get_params()["test_round_weights__mode"] == "nearest"
    with pytest.raises(ConfigError, match="no step"):
        recipe.set_params(nope__decimals=1)
    with pytest.raises(ConfigError, match="unknown pass"):
        Recipe.from_yaml("steps:\n  - pass: no.such.pass\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.from_yaml("steps: [unclosed")


def test_recipe_apply_is_deterministic(dscnn, monkeypatch):
    recipe = Recipe.of([RoundWeights(decimals=2)])
    a, stats = recipe.apply(dscnn)
    b, _ = recipe.apply(dscnn)
    assert a.onnx_bytes == b.onnx_bytes and stats == [{"pass": "test.round_weights", "decimals": 2}]


def test_torch_stage_must_precede_onnx_stage(dscnn):
    class TorchStage(RoundWeights):
        name: ClassVar[str] = "test.torchstage"
        stage: ClassVar[str] = "torch"

    with pytest.raises(ConfigError, match="must come before"):
        run_passes(dscnn, [RoundWeights(), TorchStage()], PassContext())
