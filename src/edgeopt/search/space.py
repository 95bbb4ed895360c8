"""The recipe search space: which techniques, in which order, with which parameters.

Passes are grouped into *families* by the part of their name before the first dot
(``quantize.int8`` and ``quantize.fp16`` are both ``quantize``): a recipe uses at most one pass
per family, chosen by the trial parameter ``use__<family>`` (``"none"`` or a pass name). A chosen
pass's parameters are trial parameters named ``step__param``, exactly as
:meth:`edgeopt.recipe.Recipe.set_params` names them, so a trial's parameters can be replayed on a
recipe unchanged.

Torch-stage passes (and any pass needing ``train`` data) are expensive; they get their own
``train__<family>`` choice, which the search only offers once cheap recipes have been screened
(fine-tuning only for promising recipes). When a family's expensive pass is chosen it replaces
the family's cheap pick, so a recipe still holds one pass per family.

A recipe with a torch-stage pass always gets ``fold`` afterwards when the space holds it (the
PyTorch export's shape arithmetic must be folded before quantization or a C target can take it).

Order: torch-stage passes (which train the PyTorch twin) before onnx-stage passes, then by the
family order below (structure-changing before precision-changing: pruned or factorized weights
must exist before they are quantized), then by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError
from ..passes.base import Pass

NONE = "none"

# Lower runs earlier within a stage. Families not listed sit in the middle (50).
FAMILY_ORDER = {
    "fold": 0, "fuse": 0, "simplify": 0,
    "prune": 10, "lowrank": 20, "cluster": 30, "cluster_weights": 30, "distill": 40, "qat": 45,
    "quantize": 90,
}
_STAGE_ORDER = {"torch": 0, "onnx": 1}


def family_of(pass_name: str) -> str:
    return pass_name.split(".", 1)[0].replace("-", "_")


def is_expensive(cls: type[Pass]) -> bool:
    """Torch-stage passes fine-tune in PyTorch (or at least convert to it): minutes, not seconds."""
    return cls.stage == "torch" or "train" in cls.requires


def order_key(cls: type[Pass]) -> tuple:
    fam = family_of(cls.name)
    return (_STAGE_ORDER.get(cls.stage, 1), FAMILY_ORDER.get(fam, 50), fam, cls.name)


@dataclass(frozen=True)
class SearchSpace:
    """Candidate passes (classes) plus fixed parameter values (``step__param``) the search must not vary.

    >>> from edgeopt.search import SearchSpace   # doctest: +SKIP
    >>> space = SearchSpace.from_names(["quantize.int8", "prune.magnitude"])   # doctest: +SKIP
    """

    passes: tuple[type[Pass], ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: family -> the only passes allowed for it, and the family may not be left out (a target that
    #: runs int8 only requires {"quantize": ("quantize.int8", "quantize.qat")})
    required: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        for p in self.passes:
            if not (isinstance(p, type) and issubclass(p, Pass) and p.name):
                raise ConfigError(f"a search space holds Pass subclasses with a name; got {p!r}")
        names = [p.name for p in self.passes]
        if len(set(names)) != len(names):
            raise ConfigError(f"a search space lists each pass once; got {names}")

    @classmethod
    def from_names(cls, names: Iterable[str] | None = None, *, exclude: Iterable[str] = (), fixed: Mapping[str, Any] | None = None) -> "SearchSpace":
        """A space over the registered passes named (families like 'quantize' select all their passes);
        all registered passes when ``names`` is None."""
        from ..passes import available_passes

        registry = available_passes()
        if names is None:
            chosen = list(registry.values())
        else:
            chosen = []
            for name in names:
                matches = [c for n, c in registry.items() if n == name or family_of(n) == family_of(name) == name]
                if not matches:
                    raise ConfigError(f"unknown technique {name!r}; registered passes: {', '.join(registry) or '(none)'}")
                chosen += [m for m in matches if m not in chosen]
        excluded = set(exclude)
        return cls(tuple(c for c in chosen if c.name not in excluded and family_of(c.name) not in excluded), dict(fixed or {}))

    @property
    def has_expensive(self) -> bool:
        return any(is_expensive(p) for p in self.passes)

    def families(self) -> dict[str, dict[str, list[type[Pass]]]]:
        """family -> {"cheap": [...], "train": [...]}, families in recipe order."""
        out: dict[str, dict[str, list[type[Pass]]]] = {}
        for cls in sorted(self.passes, key=order_key):
            slot = out.setdefault(family_of(cls.name), {"cheap": [], "train": []})
            slot["train" if is_expensive(cls) else "cheap"].append(cls)
        return out

    def suggest(self, trial, *, allow_expensive: bool = True, seed: int = 0):
        """Sample a Recipe from an optuna trial (define-by-run; conditional parameters)."""
        from ..recipe import Recipe, step_name

        chosen: list[type[Pass]] = []
        for fam, slots in self.families().items():
            allowed = self.required.get(fam)
            cheap = [c.name for c in slots["cheap"] if allowed is None or c.name in allowed]
            train = [c.name for c in slots["train"] if allowed is None or c.name in allowed]
            pick = NONE
            if cheap:
                # a required family is never left out when a cheap pass of it can stand in
                pick = trial.suggest_categorical(f"use__{fam}", ([] if allowed is not None else [NONE]) + cheap)
            if train and allow_expensive:
                trained = trial.suggest_categorical(f"train__{fam}", [NONE] + train)
                pick = trained if trained != NONE else pick
            if pick != NONE:
                chosen.append(next(c for c in slots["cheap"] + slots["train"] if c.name == pick))
        fold = next((c for c in self.passes if c.name == "fold"), None)
        if fold is not None and fold not in chosen and any(c.stage == "torch" for c in chosen):
            # The PyTorch export leaves shape arithmetic (Constant, ConstantOfShape, Cast, Pad,
            # Slice, Concat) that fold's constant folding removes; without it the quantizer and the
            # C targets refuse the graph, so a trained candidate would be wasted as infeasible.
            chosen.append(fold)
            forced = {fold}   # with its defaults: not a choice of this trial
        else:
            forced = set()
        chosen.sort(key=order_key)
        instances = []
        for cls in chosen:
            step = step_name(cls.name)
            fixed_here = {k.split("__", 1)[1]: v for k, v in self.fixed.items() if k.split("__", 1)[0] == step}
            params = {}
            for key, dim in ({} if cls in forced else cls.search_space()).items():
                full = f"{step}__{key}"
                if full in self.fixed:
                    params[key] = self.fixed[full]
                elif cls.param_applies(key, {**fixed_here, **params}):
                    params[key] = dim.suggest(trial, full)
                # else: conditional parameter that does not apply here; the pass keeps its default
            params.update(fixed_here)
            try:
                inst = cls(**params) if params else cls()
                inst.validate()
            except TypeError as e:
                raise ConfigError(f"pass {cls.name!r} rejected parameters {params}: {e}") from e
            instances.append(inst)
        return Recipe.of(instances, seed=seed)

    def for_target(self, target) -> "SearchSpace":
        """This space with the target's search constraints (``search_fixed``, ``search_required``)
        applied, so trials never propose what the target cannot run. The user's own fixed values win."""
        from dataclasses import replace

        present = {fam: {c.name for c in slots["cheap"] + slots["train"]} for fam, slots in self.families().items()}
        # a requirement binds only where the space holds one of its passes (a space of custom passes
        # keeps its own choices, and the target's op/dtype checks still judge them)
        required = {fam: tuple(n for n in names if n in present[fam]) for fam, names in target.search_required.items()
                    if present.get(fam, set()) & set(names)}
        return replace(self, fixed={**target.search_fixed, **self.fixed}, required={**required, **self.required})

    def describe(self) -> list[dict]:
        rows = []
        for fam, slots in self.families().items():
            for kind in ("cheap", "train"):
                for cls in slots[kind]:
                    rows.append({"family": fam, "pass": cls.name, "stage": cls.stage, "expensive": kind == "train",
                                 "params": {k: repr(v) for k, v in cls.search_space().items()}})
        return rows
