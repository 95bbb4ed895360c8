"""The Pass contract: one compression technique, one module in ``edgeopt/passes/``.

A pass subclasses :class:`Pass`, names itself (``name = "quantize.int8"``), lists what it needs
(``requires``), declares its search space, and implements ``run(model, ctx) -> PassResult``.
Its constructor takes explicit keyword arguments only and stores them unchanged under the same
names (as scikit-learn estimators do), so parameters, clones, YAML recipes and search spaces come
for free. ``Pass.__call__`` validates, checks requirements, runs, checks the promise (a new
handle, input untouched) and wraps failures in :class:`PassError`.

The registry discovers every module in this package by file name: adding a technique touches no
shared file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ..errors import ConfigError, EdgeOptError, PassError, UnsupportedModelError
from ..model import ModelHandle, PassRecord

REQUIREMENTS = ("calib", "tune", "train", "torch", "labels")


@dataclass(frozen=True)
class Choice:
    """A categorical search dimension."""

    values: tuple

    def contains(self, value) -> bool:
        return value in self.values

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def all_values(self) -> list:
        return list(self.values)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def contains(self, value) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high

    def suggest(self, trial, name: str):
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def all_values(self) -> list:
        return sorted({self.low, (self.low + self.high) // 2, self.high})


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def contains(self, value) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def suggest(self, trial, name: str):
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def all_values(self) -> list:
        return [self.low, (self.low + self.high) / 2, self.high]


SearchDim = Choice | IntRange | FloatRange


@dataclass
class PassContext:
    """What a pass may use besides the model: data splits, the task metric, the teacher, a seed.

    ``calib`` is for statistics (calibration), ``train``/``tune`` for fine-tuning and choosing;
    the evaluation split is never handed to a pass.
    """

    calib: Any = None          # edgeopt.data.Dataset
    tune: Any = None
    train: Any = None
    metric: str | Callable = "top1"
    teacher: ModelHandle | None = None
    target: Any = None         # edgeopt.target.Target
    seed: int = 0
    progress: Callable[[str, float], None] | None = None
    options: dict = field(default_factory=dict)

    def report(self, message: str, fraction: float = 0.0) -> None:
        if self.progress:
            self.progress(message, fraction)

    def has(self, requirement: str, model: ModelHandle) -> bool:
        if requirement == "torch":
            return model.torch_module is not None or self.options.get("allow_torch_conversion", True)
        if requirement == "labels":
            data = self.train or self.tune or self.calib
            return data is not None and data.has_labels
        return getattr(self, requirement, None) is not None


@dataclass(frozen=True)
class PassResult:
    """A pass's output: the new model and what it did (figures for the report)."""

    model: ModelHandle
    stats: Mapping[str, Any] = field(default_factory=dict)


class Pass:
    """Base class of every technique. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    #: "onnx" passes edit the ONNX graph; "torch" passes train the PyTorch twin and come first.
    stage: ClassVar[str] = "onnx"
    description: ClassVar[str] = ""

    # -- parameters (scikit-learn style) ---------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self" and p.kind == p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params) -> "Pass":
        """A new pass with some parameters changed; unknown names raise ConfigError."""
        unknown = set(params) - set(self.param_names())
        if unknown:
            raise ConfigError(f"pass {self.name!r} has no parameter(s) {sorted(unknown)}; its parameters are {self.param_names()}")
        return type(self)(**{**self.get_params(), **params})

    @classmethod
    def search_space(cls) -> dict[str, SearchDim]:
        """Parameters the optimizer may vary, with their ranges. Override in subclasses."""
        return {}

    @classmethod
    def mild_settings(cls) -> list[dict[str, Any]]:
        """Gentle settings (values of :meth:`search_space` parameters) that a search tries on top of
        the best single technique it has found, before sampling freely.

        A combination earns its place by beating every single technique on every objective; that
        usually takes the mild end of a structural pass's range, which a sampler may never try
        there. Empty (the default): the pass is only sampled. Override in passes that lower latency
        or size at some accuracy cost.
        """
        return []

    @classmethod
    def param_applies(cls, name: str, chosen: Mapping[str, Any]) -> bool:
        """Whether the search should vary parameter ``name`` given the values ``chosen`` so far for
        the parameters listed before it in :meth:`search_space` (fixed values included).

        Override to declare conditional parameters: one that has no effect in that combination
        (a percentile without percentile calibration) or one that :meth:`validate` would reject
        with it (bias correction on the QOperator format). A parameter that does not apply keeps
        its default, so the search never spends a trial on a combination the pass refuses or on a
        value that changes nothing.
        """
        return True

    def validate(self) -> None:
        """Raise ConfigError naming the parameter, the value and what is allowed. Override and call super()."""
        for key, dim in self.search_space().items():
            value = getattr(self, key)
            if isinstance(dim, Choice) and not dim.contains(value):
                raise ConfigError(f"{self.name}: parameter {key!r} must be one of {list(dim.values)}; got {value!r}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(sorted(self.get_params().items()))))

    # -- running ---------------------------------------------------------------------------------
    def run(self, model: ModelHandle, ctx: PassContext) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, model: ModelHandle, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx or PassContext()
        self.validate()
        missing = [r for r in sorted(self.requires) if not ctx.has(r, model)]
        if missing:
            raise ConfigError(f"pass {self.name!r} needs {', '.join(missing)} data/inputs that were not given")
        if self.stage == "torch":
            _require_one_float_input(self.name, model)
        before = model.onnx_bytes
        try:
            result = self.run(model, ctx)
        except EdgeOptError:
            raise
        except Exception as e:
            done = [r.name for r in model.history]
            raise PassError(f"{self.name} failed after {done or 'no earlier passes'}: {type(e).__name__}: {e}") from e
        if not isinstance(result, PassResult):
            raise PassError(f"pass {self.name!r} returned {type(result).__name__}; a pass must return PassResult(model, stats)")
        if model.onnx_bytes != before:
            raise PassError(f"pass {self.name!r} mutated its input model; passes must return a new handle")
        return result

    def record(self) -> PassRecord:
        return PassRecord(self.name, self.get_params())


# ------------------------------------------------------------------------------------------------
# Registry: every Pass subclass with a name, in every module of this package.
# ------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Pass]] = {}


def _discover() -> None:
    if _REGISTRY:
        return
    from . import __path__ as pkg_path

    for info in pkgutil.iter_modules(pkg_path):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Pass) and obj is not Pass and obj.name and obj.__module__ == module.__name__:
                if obj.name in _REGISTRY and _REGISTRY[obj.name] is not obj:
                    raise RuntimeError(f"two passes are named {obj.name!r}: {_REGISTRY[obj.name]} and {obj}")
                _REGISTRY[obj.name] = obj


def available_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = available_passes()
    if name not in passes:
        raise ConfigError(f"unknown pass {name!r}; available passes: {', '.join(passes)}")
    return passes[name]


def make_pass(name: str, params: Mapping[str, Any] | None = None) -> Pass:
    cls = get_pass(name)
    params = dict(params or {})
    unknown = set(params) - set(cls.param_names())
    if unknown:
        raise ConfigError(f"pass {name!r} has no parameter(s) {sorted(unknown)}; its parameters are {cls.param_names()}")
    instance = cls(**params)
    instance.validate()
    return instance


def run_passes(model: ModelHandle, passes: Sequence[Pass], ctx: PassContext) -> tuple[ModelHandle, list[dict]]:
    """Apply passes in order; torch-stage passes must precede onnx-stage ones."""
    seen_onnx = False
    stats = []
    for p in passes:
        if p.stage == "onnx":
            seen_onnx = True
        elif seen_onnx:
            raise ConfigError(f"pass {p.name!r} trains in PyTorch and must come before ONNX graph passes")
        result = p(model, ctx)
        model = result.model
        stats.append({"pass": p.name, **dict(result.stats)})
    return model, stats


def untrainable_reason(model: ModelHandle) -> str | None:
    """Why training passes cannot take ``model`` (None when they can). They fine-tune a PyTorch twin
    on batches of one float array against one output (edgeopt.training)."""
    inputs = [(s.name, s.dtype) for s in model.inputs]
    if len(inputs) != 1 or not str(inputs[0][1]).startswith("float"):
        return f"training passes take models with one float input; this model takes {inputs}"
    if len(model.outputs) != 1:
        # distillation matches one output; with several (a detector's scores and boxes) it would
        # train on the first alone, whatever --output names
        return f"training passes distil one output; this model has {len(model.outputs)}: {[s.name for s in model.outputs]}"
    return None


def _require_one_float_input(name: str, model: ModelHandle) -> None:
    """Refuse before converting anything: on a transformer with token ids and a mask, torch-pruning's
    dependency graph alone ran for over ten minutes before failing on the integer inputs."""
    reason = untrainable_reason(model)
    if reason:
        raise UnsupportedModelError(
            f"{name}: {reason}. Use the ONNX-stage passes for it (quantize.int8, quantize.dynamic, quantize.fp16, fold, ...)")
