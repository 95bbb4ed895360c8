"""Recipe: an ordered, named list of passes with their parameters; YAML round trip.

``edgeopt apply MODEL --recipe recipe.yaml`` replays it: same passes, same parameters, same seed,
same data rows, so the result is the same model byte for byte.

>>> r = Recipe.from_dict({"steps": [{"pass": "fold", "params": {}}]})  # doctest: +SKIP
>>> r.set_params(fold__tolerance=1e-5)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError
from .passes.base import Pass, PassContext, make_pass, run_passes

FORMAT_VERSION = 1


def step_name(pass_name: str) -> str:
    """Default step name: the pass name with dots as underscores ('quantize.int8' -> 'quantize_int8')."""
    return pass_name.replace(".", "_").replace("-", "_")


@dataclass(frozen=True)
class Recipe:
    steps: tuple[tuple[str, Pass], ...] = ()
    seed: int = 0
    data: Mapping[str, Any] = field(default_factory=dict)   # how the data was split, for the record
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, passes: Sequence[Pass], **kwargs) -> "Recipe":
        names: list[str] = []
        steps = []
        for p in passes:
            base = step_name(p.name)
            name = base if base not in names else f"{base}_{sum(n.startswith(base) for n in names) + 1}"
            names.append(name)
            steps.append((name, p))
        return cls(tuple(steps), **kwargs)

    @property
    def passes(self) -> list[Pass]:
        return [p for _, p in self.steps]

    def set_params(self, **params) -> "Recipe":
        """``recipe.set_params(prune_channels__ratio=0.3)``: the same names as in optuna trials."""
        changes: dict[str, dict] = {}
        for key, value in params.items():
            if "__" not in key:
                raise ConfigError(f"recipe parameters are named step__param; got {key!r}")
            step, param = key.split("__", 1)
            changes.setdefault(step, {})[param] = value
        known = {n for n, _ in self.steps}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"recipe has no step(s) {sorted(unknown)}; its steps are {sorted(known)}")
        steps = tuple((n, p.set_params(**changes[n]) if n in changes else p) for n, p in self.steps)
        return Recipe(steps, self.seed, self.data, self.metadata)

    def get_params(self) -> dict[str, Any]:
        return {f"{n}__{k}": v for n, p in self.steps for k, v in p.get_params().items()}

    def apply(self, model, ctx: PassContext | None = None):
        """Run every step in order; returns (model, per-step stats)."""
        ctx = ctx or PassContext(seed=self.seed)
        return run_passes(model, self.passes, ctx)

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "edgeopt_recipe": FORMAT_VERSION,
            "seed": self.seed,
            "data": dict(self.data),
            "steps": [{"name": n, "pass": p.name, "params": _plain(p.get_params())} for n, p in self.steps],
            "metadata": _plain(dict(self.metadata)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        if not isinstance(data, Mapping) or "steps" not in data:
            raise ConfigError("a recipe is a mapping with a 'steps' list; see `edgeopt optimize --help`")
        version = data.get("edgeopt_recipe", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"recipe format version {version!r} is not supported; this edgeopt reads version {FORMAT_VERSION}")
        steps = []
        for i, step in enumerate(data["steps"] or []):
            if not isinstance(step, Mapping) or "pass" not in step:
                raise ConfigError(f"recipe step {i} must be a mapping with a 'pass' key; got {step!r}")
            p = make_pass(step["pass"], step.get("params") or {})
            steps.append((step.get("name") or step_name(p.name), p))
        names = [n for n, _ in steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"recipe step names must be unique; got {names}")
        seed = data.get("seed", 0)
        if not isinstance(seed, int):
            raise ConfigError(f"recipe seed must be an integer; got {seed!r}")
        return cls(tuple(steps), seed, dict(data.get("data") or {}), dict(data.get("metadata") or {}))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Recipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe is not valid YAML: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        from ._io import write_text_atomic

        return write_text_atomic(path, self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist")
        return cls.from_yaml(path.read_text(encoding="utf-8"))


def _plain(value):
    """YAML-safe plain values (tuples -> lists, numpy scalars -> Python)."""
    import numpy as np

    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
