"""Static figures of a candidate graph, computed without running it: bytes on disk, MACs per data
type, peak activation memory (tensor liveness), bytes moved, ops the target cannot run.

These feed the cheap screening step (a candidate over a budget here is pruned before it is
evaluated or benchmarked) and the cost/energy estimates for targets we cannot measure on. The
counting itself is :func:`edgeopt.profiling.graph_counts`, the one implementation ``edgeopt
profile`` also reports, so a screened figure and a profiled one are the same number.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StaticFigures:
    size_bytes: int
    weight_bytes: int
    activation_peak_bytes: int
    activation_total_bytes: int
    macs_by_dtype: dict = field(default_factory=dict)
    op_types: tuple = ()
    unknown_shapes: int = 0

    @property
    def macs(self) -> int:
        return int(sum(self.macs_by_dtype.values()))

    @property
    def bytes_moved(self) -> int:
        # every weight read once, every activation written once and read once (estimate)
        return self.weight_bytes + 2 * self.activation_total_bytes

    def ram_bytes(self, runtime: str) -> int:
        """Peak RAM: generated C keeps weights in flash; ONNX Runtime loads them into RAM."""
        return self.activation_peak_bytes + (0 if runtime == "c" else self.weight_bytes)


def static_figures(model) -> StaticFigures:
    """Figures of ``model`` (a ModelHandle) at batch 1."""
    from ..profiling import graph_counts

    counts = graph_counts(model)
    proto = model.proto()
    graph_inputs = {value.name for value in proto.graph.input}
    liveness = counts.liveness
    return StaticFigures(
        size_bytes=model.size_bytes, weight_bytes=counts.weight_bytes,
        activation_peak_bytes=liveness.peak_bytes,
        # every activation a node writes (the int8 stand-ins of a QDQ graph, not the float tensors)
        activation_total_bytes=sum(t.bytes for name, t in liveness.tensors.items() if name not in graph_inputs),
        macs_by_dtype=counts.macs_by_dtype,
        op_types=tuple(sorted({n.op_type for n in proto.graph.node})),
        unknown_shapes=sum(1 for name in counts.mac_dtypes if name in counts.uncounted) + len(liveness.unknown_size),
    )


def unsupported_on(target, figures: StaticFigures) -> list[str]:
    """Ops and MAC data types in the candidate that the target does not list."""
    problems = []
    if target.ops is not None:
        problems += [f"op:{op}" for op in figures.op_types if op not in set(target.ops)]
    problems += [f"dtype:{d}" for d, n in figures.macs_by_dtype.items() if n and d not in target.dtypes]
    return problems
