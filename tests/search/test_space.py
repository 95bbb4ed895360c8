"""The recipe space: families, valid order, step__param names, expensive passes held back."""

from __future__ import annotations

import optuna
import pytest

from edgeopt.errors import ConfigError
from edgeopt.passes.base import FloatRange, Pass, PassResult
from edgeopt.model import PassRecord
from edgeopt.recipe import Recipe
from edgeopt.search import SearchSpace
from _passes import DynamicInt8, StaticInt8, ThresholdPrune


class ShrinkDenseTrained(Pass):
    """A torch-stage, training pass (only its declaration matters for ordering here)."""

    name = "lowrank.trained"
    stage = "torch"
    requires = frozenset({"train"})

    def __init__(self, *, keep: float = 0.5):
        self.keep = keep

    @classmethod
    def search_space(cls):
        return {"keep": FloatRange(0.1, 0.9)}

    def run(self, model, ctx):
        return PassResult(model.derive(model.proto(), PassRecord(self.name, self.get_params())), {})


def test_order_torch_first_then_structure_then_precision():
    space = SearchSpace((DynamicInt8, ThresholdPrune, ShrinkDenseTrained))
    trial = optuna.trial.FixedTrial({"use__quantize": "quantize.dynamic_int8", "quantize_dynamic_int8__ops": "all",
                                     "quantize_dynamic_int8__weight_type": "quint8", "use__prune": "prune.threshold",
                                     "prune_threshold__sparsity": 0.3, "train__lowrank": "lowrank.trained",
                                     "lowrank_trained__keep": 0.4})
    recipe = space.suggest(trial, allow_expensive=True)
    assert [p.name for p in recipe.passes] == ["lowrank.trained", "prune.threshold", "quantize.dynamic_int8"]
    assert recipe.passes[0].stage == "torch"
    # trial parameter names are the recipe's step__param names
    assert recipe.get_params() == {"lowrank_trained__keep": 0.4, "prune_threshold__sparsity": 0.3,
                                   "quantize_dynamic_int8__ops": "all", "quantize_dynamic_int8__weight_type": "quint8"}
    again = recipe.set_params(prune_threshold__sparsity=0.3)
    assert again.passes == recipe.passes


def test_one_pass_per_family_and_none_allowed():
    space = SearchSpace((DynamicInt8, StaticInt8, ThresholdPrune))
    fams = space.families()
    assert list(fams) == ["prune", "quantize"]
    assert [c.name for c in fams["quantize"]["cheap"]] == ["quantize.dynamic_int8", "quantize.static_int8"]
    recipe = space.suggest(optuna.trial.FixedTrial({"use__prune": "none", "use__quantize": "quantize.static_int8",
                                                    "quantize_static_int8__per_channel": True}))
    assert [p.name for p in recipe.passes] == ["quantize.static_int8"]
    assert recipe.passes[0].per_channel is True


def test_expensive_passes_only_when_allowed():
    space = SearchSpace((ThresholdPrune, ShrinkDenseTrained))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        recipe = space.suggest(trial, allow_expensive=False)
        assert "lowrank.trained" not in [p.name for p in recipe.passes]
        assert not any(k.startswith(("train__", "lowrank")) for k in trial.params)
        study.tell(trial, 0.0)
    assert space.has_expensive


def test_fixed_parameters_are_not_searched():
    space = SearchSpace((ThresholdPrune,), fixed={"prune_threshold__sparsity": 0.25})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recipe = None
    while recipe is None or not recipe.passes:
        trial = study.ask()
        recipe = space.suggest(trial)
    assert recipe.passes[0].sparsity == 0.25
    assert "prune_threshold__sparsity" not in trial.params


def test_bad_space_is_config_error():
    with pytest.raises(ConfigError, match="unknown technique"):
        SearchSpace.from_names(["no.such.pass"])
    with pytest.raises(ConfigError):
        SearchSpace((ThresholdPrune, ThresholdPrune))
    with pytest.raises(ConfigError):
        SearchSpace((object,))  # type: ignore[arg-type]


def test_recipe_yaml_round_trip_of_a_suggestion():
    # the passes here are not registered, so round-trip through the dict form the study stores
    space = SearchSpace((ThresholdPrune,))
    recipe = space.suggest(optuna.trial.FixedTrial({"use__prune": "prune.threshold", "prune_threshold__sparsity": 0.5}), seed=7)
    d = recipe.to_dict()
    assert d["seed"] == 7 and d["steps"][0] == {"name": "prune_threshold", "pass": "prune.threshold", "params": {"sparsity": 0.5}}
    assert isinstance(recipe, Recipe)


class TorchQuantize(Pass):
    name = "quantize.torch_stage"
    stage = "torch"

    def run(self, model, ctx):  # pragma: no cover - ordering only
        raise NotImplementedError


def test_expensive_pick_replaces_the_cheap_pick_of_its_family():
    space = SearchSpace((DynamicInt8, TorchQuantize))
    assert [c.name for c in space.families()["quantize"]["train"]] == ["quantize.torch_stage"]
    recipe = space.suggest(optuna.trial.FixedTrial({"use__quantize": "quantize.dynamic_int8", "quantize_dynamic_int8__ops": "all",
                                                    "quantize_dynamic_int8__weight_type": "quint8",
                                                    "train__quantize": "quantize.torch_stage"}))
    assert [p.name for p in recipe.passes] == ["quantize.torch_stage"]


def test_a_trained_recipe_is_always_folded_afterwards():
    from edgeopt.passes import get_pass

    fold = get_pass("fold")
    space = SearchSpace((fold, ThresholdPrune, ShrinkDenseTrained))
    trained = space.suggest(optuna.trial.FixedTrial({"use__fold": "none", "use__prune": "none", "train__lowrank": "lowrank.trained",
                                                     "lowrank_trained__keep": 0.4}), allow_expensive=True)
    assert [p.name for p in trained.passes] == ["lowrank.trained", "fold"]
    plain = space.suggest(optuna.trial.FixedTrial({"use__fold": "none", "use__prune": "prune.threshold",
                                                   "prune_threshold__sparsity": 0.3, "train__lowrank": "none"}),
                          allow_expensive=True)
    assert [p.name for p in plain.passes] == ["prune.threshold"]   # no torch stage: fold stays the trial's choice


def test_microcontroller_targets_constrain_what_the_search_proposes():
    import optuna

    from edgeopt.target import Target

    target = Target.parse("cortex-m7")
    space = SearchSpace.from_names(["fold", "equalize", "quantize.int8", "quantize.fp16", "quantize.int4"]).for_target(target)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        recipe = space.suggest(trial)
        names = [p.name for p in recipe.passes]
        # the generated C runs int8 QDQ only: every recipe quantizes to int8, in the QDQ form
        assert "quantize.int8" in names and "quantize.fp16" not in names and "quantize.int4" not in names
        int8 = next(p for p in recipe.passes if p.name == "quantize.int8")
        assert int8.format == "qdq" and int8.pad_channels is False   # pad_channels adds a Pad the C path lacks
        assert int8.float_layers == 0   # no fp32 layers on an int8-only target (mixed precision is for ORT ones)
        study.tell(trial, 0.0)
    rpi4 = SearchSpace.from_names(["quantize.int8"]).for_target(Target.parse("rpi4"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(40):
        trial = study.ask()
        drawn |= {p.float_layers for p in rpi4.suggest(trial).passes if p.name == "quantize.int8"}
        study.tell(trial, 0.0)
    assert drawn == {0, 1, 2, 3}   # a target that runs fp32 searches mixed precision
    # the user's own fixed values win over the target's; a host search is not constrained
    mine = SearchSpace.from_names(["quantize.int8"], fixed={"quantize_int8__format": "qoperator"}).for_target(target)
    assert mine.fixed["quantize_int8__format"] == "qoperator"
    host = SearchSpace.from_names(["quantize.int8", "quantize.fp16"]).for_target(Target.parse("host"))
    assert host.required == {} and host.fixed == {}


def test_mild_settings_of_every_registered_pass_are_valid_points_of_its_space():
    from edgeopt.passes import available_passes

    with_settings = 0
    for name, cls in available_passes().items():
        space = cls.search_space()
        for setting in cls.mild_settings():
            with_settings += 1
            assert set(setting) <= set(space), f"{name}: mild setting {setting} names parameters outside its search space"
            for key, value in setting.items():
                assert space[key].contains(value), f"{name}: mild {key}={value!r} is outside {space[key]!r}"
            cls(**setting).validate()
    assert with_settings >= 3   # prune.channels and lowrank declare theirs
