"""Static memory plan: every activation buffer gets a fixed offset in one arena.

Buffers whose lifetimes overlap must not overlap in memory. Offsets are chosen greedily by size
(largest first, each at the lowest offset that fits beside the already placed buffers that are
live at the same time), the heuristic TFLite Micro's GreedyMemoryPlanner also uses; it is
simple, deterministic and usually within a few percent of the lower bound (the largest sum of
simultaneously live buffers), which the plan reports next to the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Buffer:
    """One arena allocation: ``first``/``last`` are op indices (inclusive) where it is live."""

    name: str
    size: int
    first: int
    last: int
    offset: int = -1
    tensors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "size": self.size, "first_op": self.first,
                "last_op": self.last, "tensors": list(self.tensors)}


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_bytes: int
    lower_bound_bytes: int
    peak_op: int            # op index where the live buffers reach furthest into the arena

    def offset_of(self, buffer_name: str) -> int:
        return next(b.offset for b in self.buffers if b.name == buffer_name)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def plan_memory(buffers: list[Buffer], *, alignment: int = 4) -> MemoryPlan:
    """Place ``buffers`` in one arena; returns offsets, arena size, lower bound and peak op.

    >>> plan = plan_memory([Buffer("a", 100, 0, 1), Buffer("b", 50, 1, 2), Buffer("c", 100, 2, 3)])
    >>> [(b.name, b.offset) for b in plan.buffers], plan.arena_bytes
    ([('a', 0), ('b', 100), ('c', 0)], 152)
    """
    order = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].first, i))
    placed: list[Buffer] = []
    for i in order:
        buf = buffers[i]
        size = _align(buf.size, alignment)
        overlapping = sorted((p for p in placed if p.first <= buf.last and buf.first <= p.last), key=lambda p: p.offset)
        offset = 0
        for other in overlapping:
            if offset + size <= other.offset:
                break
            offset = max(offset, _align(other.offset + other.size, alignment))
        buf.offset = offset
        placed.append(buf)
    arena = max((_align(b.offset + b.size, alignment) for b in buffers), default=0)
    last_op = max((b.last for b in buffers), default=-1)
    lower = 0
    peak_op, peak_end = 0, -1
    for t in range(last_op + 1):
        live = [b for b in buffers if b.first <= t <= b.last]
        lower = max(lower, sum(_align(b.size, alignment) for b in live))
        end = max((b.offset + b.size for b in live), default=0)
        if end > peak_end:
            peak_op, peak_end = t, end
    return MemoryPlan(buffers, arena, lower, peak_op)
