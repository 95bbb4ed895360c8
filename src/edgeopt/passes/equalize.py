"""Cross-layer equalization before int8 quantization (see :mod:`edgeopt.quant.equalize`).

Exact in real arithmetic; verified against the input within ``tolerance`` (relative to the output
range) on real rows before it is emitted.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..quant.equalize import equalize
from ..quant.verify import check_close, sample_inputs
from .base import IntRange, Pass, PassContext, PassResult


class Equalize(Pass):
    """Rescale Conv -> ReLU -> Conv pairs so per-channel weight ranges match (for depthwise nets)."""

    name = "equalize"
    description = "cross-layer equalization of Conv->ReLU->Conv pairs (function-preserving)"

    def __init__(self, *, iterations: int = 2, tolerance: float = 1e-4):
        self.iterations = iterations
        self.tolerance = tolerance

    @classmethod
    def search_space(cls):
        return {"iterations": IntRange(1, 4)}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or not 1 <= self.iterations <= 20:
            raise ConfigError(f"equalize: parameter 'iterations' must be an integer in 1..20; got {self.iterations!r}")
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance <= 0.1:
            raise ConfigError(f"equalize: parameter 'tolerance' must be in (0, 0.1]; got {self.tolerance!r}")

    def run(self, model, ctx: PassContext) -> PassResult:
        proto = model.proto()
        pairs = equalize(proto, iterations=self.iterations)
        new = model.derive(proto, self.record())
        worst = check_close(model, new, sample_inputs(model, ctx), atol=self.tolerance, what="equalize")
        return PassResult(new, {"pairs_equalized": pairs, "max_abs_error": worst})
