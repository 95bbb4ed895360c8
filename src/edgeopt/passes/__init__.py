"""Compression passes, one technique per module; see :mod:`edgeopt.passes.base` for the contract."""

from .base import Pass, PassContext, PassResult, available_passes, get_pass, make_pass, run_passes

__all__ = ["Pass", "PassContext", "PassResult", "available_passes", "get_pass", "make_pass", "run_passes"]
