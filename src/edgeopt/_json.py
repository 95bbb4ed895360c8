"""One conversion of results to plain JSON values, shared by the CLI, reports and the search."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def to_jsonable(obj: Any, *, strict: bool = True) -> Any:
    """Turn dataclasses, numpy scalars/arrays and paths into plain JSON values (NaN -> null).

    ``strict=False`` also turns any other object into its ``str`` (pass statistics may hold anything).
    """
    import dataclasses
    from pathlib import Path

    import numpy as np

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict(), strict=strict)
        return {f.name: to_jsonable(getattr(obj, f.name), strict=strict) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict(), strict=strict)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, strict=strict) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), strict=strict)
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), strict=strict)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if not strict and not (isinstance(obj, (str, int, float, bool)) or obj is None):
        return str(obj)
    return obj
