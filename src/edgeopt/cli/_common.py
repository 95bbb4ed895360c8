"""Helpers shared by command modules: JSON output, rich console, option parsing."""

from __future__ import annotations

import json
import sys
from typing import Any

from .._json import to_jsonable  # noqa: F401  (re-exported: command modules import it from here)
from ..errors import ConfigError


def console(stderr: bool = False):
    import os

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped to a file or a CI log, rich would assume 80 columns and crop the right-hand columns of
    # the wide tables (numbers cut short look like valid numbers): print 120 wide instead.
    width = None if "COLUMNS" in os.environ or stream.isatty() else 120
    return Console(stderr=stderr, highlight=False, width=width)


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
