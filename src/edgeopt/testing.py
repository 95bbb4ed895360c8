"""Shared contract tests every pass must pass (like optuna's sampler tests).

Subclass :class:`PassContract` in ``tests/passes/test_<name>.py`` and supply fixtures:

- ``pass_instance``: a configured pass;
- ``model``: a small real :class:`~edgeopt.model.ModelHandle` it applies to;
- ``ctx``: a :class:`~edgeopt.passes.PassContext` with whatever data it needs;
- ``bad_params``: a list of ``{param: value}`` dicts that must raise ConfigError.
"""

from __future__ import annotations

import numpy as np
import pytest

from .errors import ConfigError
from .recipe import Recipe


class PassContract:
    def test_input_not_mutated_and_output_runs(self, pass_instance, model, ctx):
        before = model.onnx_bytes
        result = pass_instance(model, ctx)
        assert model.onnx_bytes == before, "the pass mutated its input model"
        assert result.model is not model
        feeds = model.example_inputs(batch=2 if not model.inputs[0].shape or model.inputs[0].shape[0] != 1 else 1)
        out_new = result.model.run(feeds)
        out_old = model.run(feeds)
        assert len(out_new) == len(out_old)
        for a, b in zip(out_new, out_old):
            assert a.shape == b.shape, "the pass changed an output shape"
            assert np.all(np.isfinite(a))
        assert result.model.history[-1].name == pass_instance.name

    def test_params_round_trip_through_recipe_yaml(self, pass_instance):
        recipe = Recipe.of([pass_instance], seed=3)
        again = Recipe.from_yaml(recipe.to_yaml())
        assert again.passes[0] == pass_instance
        assert again.seed == 3

    def test_every_search_space_value_is_accepted(self, pass_instance):
        for key, dim in type(pass_instance).search_space().items():
            for value in dim.all_values():
                pass_instance.set_params(**{key: value}).validate()

    def test_every_combination_the_search_proposes_is_accepted(self, pass_instance):
        # walk the search space as SearchSpace.suggest does: a parameter that does not apply
        # (param_applies) is not sampled and keeps its default
        cls = type(pass_instance)
        combos: list[dict] = [{}]
        for key, dim in cls.search_space().items():
            grown = []
            for chosen in combos:
                if cls.param_applies(key, chosen):
                    grown += [{**chosen, key: v} for v in dim.all_values()]
                else:
                    grown.append(chosen)
            combos = grown[:5000]
        for chosen in combos:
            cls(**chosen).validate()

    def test_bad_params_raise_config_error(self, pass_instance, bad_params):
        assert bad_params, "a contract test must list at least one bad parameter set"
        for params in bad_params:
            with pytest.raises(ConfigError):
                pass_instance.set_params(**params).validate()

    def test_unknown_param_raises_config_error(self, pass_instance):
        with pytest.raises(ConfigError):
            pass_instance.set_params(no_such_parameter_xyz=1)
