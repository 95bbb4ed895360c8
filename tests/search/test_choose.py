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
