"""One exception root for everything edgeopt raises on purpose.

Each error also inherits the builtin it resembles, so ``except ValueError`` in user code keeps
working. The CLI turns any :class:`EdgeOptError` into a one-line message and ``exit_code``;
``--debug`` shows the traceback.
"""

from __future__ import annotations


class EdgeOptError(Exception):
    """Root of all errors edgeopt raises deliberately."""

    exit_code = 1


class ConfigError(EdgeOptError, ValueError):
    """A parameter, option or recipe value is not allowed. The message names it and what is allowed."""


class ModelLoadError(EdgeOptError, ValueError):
    """A model file cannot be read: missing, empty, truncated, not a model, or unsafe."""


class UnsupportedModelError(EdgeOptError, ValueError):
    """The model is valid but uses something edgeopt cannot handle (an op, a dtype, a layout)."""


class DataError(EdgeOptError, ValueError):
    """Data cannot be read, or does not fit the model (shape, dtype, missing key or labels)."""


class PassError(EdgeOptError, RuntimeError):
    """A compression pass failed; chained (``from e``) to the underlying cause."""


class VerificationError(EdgeOptError, AssertionError):
    """An emitted model deviates from its source beyond the stated tolerance; it was not written."""


class BudgetError(EdgeOptError, RuntimeError):
    """No candidate meets a hard budget (accuracy drop, RAM, flash). The report is still written."""

    exit_code = 2


class MissingDependencyError(EdgeOptError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class ToolchainError(EdgeOptError, RuntimeError):
    """An external tool (compiler, emulator) is missing or failed; the message says how to install it."""


def require(module: str, *, extra: str | None = None):
    """Import ``module`` or raise :class:`MissingDependencyError` with an install hint.

    >>> np = require("numpy")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'edgeopt[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(f"{module} is required for this feature; install it with: {hint}") from e


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), cut to
    ``limit`` characters: foreign errors are quoted in one-line messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
