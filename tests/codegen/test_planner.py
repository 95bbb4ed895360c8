"""Memory planner: exact offsets on hand-made lifetimes, no live overlap, in-place and alias sharing."""

from __future__ import annotations

import itertools

import numpy as np

from edgeopt.codegen.planner import Buffer, plan_memory


def _no_live_overlap(plan):
    for a, b in itertools.combinations(plan.buffers, 2):
        if a.first <= b.last and b.first <= a.last:  # live at the same time
            assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)


def test_chain_reuses_memory_of_dead_buffers():
    # a -> b -> c -> d: each buffer lives from its producer to its consumer
    plan = plan_memory([Buffer("a", 1000, 0, 1), Buffer("b", 400, 1, 2), Buffer("c", 1000, 2, 3), Buffer("d", 40, 3, 4)])
    assert {b.name: b.offset for b in plan.buffers} == {"a": 0, "b": 1000, "c": 0, "d": 1000}
    assert plan.arena_bytes == 1400
    assert plan.lower_bound_bytes == 1400
    assert plan.peak_op == 1
    _no_live_overlap(plan)


def test_largest_first_fills_gaps():
    # a residual block: x lives across the branch; the small branch tensors fit beside it
    bufs = [Buffer("x", 256, 0, 3), Buffer("y1", 512, 1, 2), Buffer("y2", 128, 2, 3), Buffer("out", 256, 3, 4)]
    plan = plan_memory(bufs)
    assert {b.name: b.offset for b in plan.buffers} == {"x": 512, "y1": 0, "y2": 768, "out": 0}
    assert plan.arena_bytes == 896
    _no_live_overlap(plan)


def test_alignment_rounds_offsets_up_to_four_bytes():
    plan = plan_memory([Buffer("a", 3, 0, 1), Buffer("b", 5, 0, 1), Buffer("c", 1, 0, 1)])
    assert sorted(b.offset for b in plan.buffers) == [0, 8, 12]
    assert all(b.offset % 4 == 0 for b in plan.buffers)
    assert plan.arena_bytes == 16


def test_random_lifetimes_never_overlap_and_respect_lower_bound():
    rng = np.random.default_rng(0)
    for _ in range(50):
        bufs = []
        for i in range(12):
            first = int(rng.integers(0, 10))
            bufs.append(Buffer(f"t{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 4))))
        plan = plan_memory(bufs)
        _no_live_overlap(plan)
        assert plan.arena_bytes >= plan.lower_bound_bytes


def test_model_plan_shares_inplace_and_reshape_buffers(kws_q_int8):
    import onnx

    from edgeopt.codegen.emit import build_buffers
    from edgeopt.codegen.lower import lower

    lowered = lower(onnx.load(str(kws_q_int8)))
    buffers, owner = build_buffers(lowered)
    # every reshape output lives in its input's buffer: no copy, no extra arena
    for op in lowered.ops:
        if op.kind == "reshape":
            assert owner[op.output] == owner.get(op.inputs[0], op.inputs[0])
    # the softmax writes over its (dead) input
    soft = next(op for op in lowered.ops if op.kind == "softmax")
    assert owner[soft.output] == owner[soft.inputs[0]]
    plan = plan_memory(buffers)
    _no_live_overlap(plan)
    # DS-CNN peak: two 64x25x5 activations live at once
    assert plan.arena_bytes == 2 * 64 * 25 * 5
