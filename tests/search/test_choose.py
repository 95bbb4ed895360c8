"""The search's pick: first Pareto point in objective order, unless another front point beats the
best single-technique result on every objective (then the first of those)."""

from types import SimpleNamespace

from edgeopt.search.study import choose_best, pareto_front


def _t(number, *values):
    return SimpleNamespace(number=number, values=tuple(values), feasible=True)


MIN3 = ("minimize", "minimize", "minimize")


def test_point_that_beats_the_single_technique_on_every_objective_is_preferred():
    # (latency ms, bytes, drop): the fastest point trades accuracy away; trial 14 beats int8 on all three
    int8 = _t(1, 8.59, 33772, -0.001)
    front = pareto_front([int8, _t(20, 6.40, 27428, 0.010), _t(24, 7.04, 28400, -0.005), _t(14, 7.42, 30200, -0.007)], MIN3)
    assert [t.number for t in front] == [20, 24, 14]  # int8 is dominated by 24 and 14
    assert choose_best(front).number == 20                       # no reference: objective order
    assert choose_best(front, int8, MIN3).number == 24          # first front point no worse than int8 anywhere


def test_without_a_dominating_point_the_order_rule_stands():
    ref = _t(1, 8.59, 33772, -0.010)
    front = pareto_front([ref, _t(20, 6.40, 27428, 0.010)], MIN3)
    assert choose_best(front, ref, MIN3).number == 20
    assert choose_best([], ref, MIN3) is None


def test_maximized_objectives_compare_the_other_way():
    directions = ("minimize", "maximize")
    ref = _t(1, 5.0, 0.90)
    front = pareto_front([ref, _t(2, 4.0, 0.80), _t(3, 4.5, 0.91)], directions)
    assert choose_best(front, ref, directions).number == 3


def test_differences_nobody_could_measure_do_not_make_front_points():
    # KWS on cortex-m7 (study kws6): int8 variants of one network, estimated latencies a few MACs apart
    pruned = _t(40, 6.8105, 28604, -0.002)
    v18 = _t(18, 8.593225, 33772, -0.004)
    v34 = _t(34, 8.593226, 34232, -0.008)
    v33 = _t(33, 8.593252, 33772, -0.008)
    front = pareto_front([pruned, v18, v34, v33], MIN3)
    # 33 is as fast as 18 and 34 (within 1e-4), as small as 18 and smaller than 34, and more accurate than 18
    assert [t.number for t in front] == [40, 33]
    # a real latency difference still counts
    faster = _t(50, 8.50, 33772, -0.008)
    assert [t.number for t in pareto_front([v33, faster], MIN3)] == [50]
    # equal within the tolerance on every objective: kept once, the lower trial number first
    twin = _t(12, 8.593252, 33772, -0.008)
    assert [t.number for t in pareto_front([v33, twin], MIN3)] == [12]


def test_at_least_as_good_uses_the_same_tolerance():
    ref = _t(78, 39.31396913, 87528, -0.004)
    chosen = _t(67, 39.31393209, 87528, -0.008)
    slower = _t(5, 39.3215, 87464, -0.008)
    assert choose_best([chosen, slower], ref, MIN3).number == 67
    assert choose_best([_t(9, 39.40, 87528, -0.008)], ref, MIN3).number == 9   # order rule: no point beats ref


def _r(number, steps, *values):
    return SimpleNamespace(number=number, steps=list(steps), values=tuple(values), feasible=True)


INT8 = ("fold", "quantize.int8")
PRUNED_INT8 = ("prune.channels", "fold", "quantize.int8")


def test_the_best_single_technique_is_probed_until_a_combination_beats_it():
    from edgeopt.search.study import MAX_PROBE_ROUNDS, probe_reference

    int8 = _r(20, INT8, 8.593, 33772, -0.007)
    luckier = _r(40, INT8, 8.593, 33772, -0.012)   # the same network, a luckier calibration on the tune rows
    pruned = _r(30, PRUNED_INT8, 7.569, 30828, -0.011)
    assert probe_reference([int8], MIN3, probed=[]).number == 20
    assert probe_reference([int8], MIN3, probed=[20]) is None                  # probed once per reference
    assert probe_reference([int8, pruned], MIN3, probed=[]) is None            # a combination already beats it
    # a luckier single-technique variant becomes the reference and the pruned point no longer beats it
    assert probe_reference([int8, pruned, luckier], MIN3, probed=[20]).number == 40
    # another single technique that is as good as the reference is not a combination that beats it
    assert probe_reference([int8, _r(41, ("equalize", "quantize.int8"), 8.593, 33772, -0.007)], MIN3, probed=[]).number == 20
    assert probe_reference([int8, pruned, luckier], MIN3, probed=list(range(MAX_PROBE_ROUNDS))) is None
