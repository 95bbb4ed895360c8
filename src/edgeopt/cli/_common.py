"""Helpers shared by command modules: JSON output, rich console, option parsing."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from ..errors import ConfigError


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, numpy scalars/arrays and paths into plain JSON values (NaN -> null)."""
    import dataclasses
    from pathlib import Path

    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


def parse_fraction(text: str, *, option: str) -> float:
    """Parse '1%', '0.5pt', '0.01' into a fraction in (0, 1); 'pt' means percentage points."""
    raw = str(text).strip().lower()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        elif raw.endswith("pt"):
            value = float(raw[:-2]) / 100
        else:
            value = float(raw)
    except ValueError:
        raise ConfigError(f"{option} must be a fraction in (0, 1), a percentage like '1%' or points like '0.5pt'; got {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"{option} must be a fraction in (0, 1), a percentage like '1%' or points like '0.5pt'; got {text!r}")
    return value


def parse_dims(items: list[str] | None) -> dict[str, int] | None:
    """--dim NAME=SIZE options -> {"sequence": 128} (None when none were given)."""
    dims: dict[str, int] = {}
    for item in items or []:
        key, _, value = str(item).partition("=")
        if not key.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"--dim takes NAME=SIZE with a positive size, like 'sequence=128'; got {item!r}")
        dims[key.strip()] = int(value)
    return dims or None
