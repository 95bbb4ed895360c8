"""Re-judge a stored search study under both accuracy-budget rules, without re-running a trial.

Every trial stores its drop on the tune rows with a paired bootstrap 95% CI, so the Pareto front
and the pick can be recomputed for

- ``estimate``: the drop's point estimate must be within the budget (the rule before session 3);
- ``upper``: the upper end of its 95% CI must be (the default now: guards against the winner's
  curse of scoring many candidates on the same rows; docs/search.md).

The front and the pick use the current code (``pareto_front``, ``best_single_technique``,
``choose_best``), so the same study re-judged after a change to those shows the change's effect.
Held-out figures need the model rebuilt: re-finalize with ``edgeopt optimize ... --resume``.

    python benchmarks/rejudge_study.py sqlite:////tmp/runs/kws5.db [more study URLs] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from edgeopt.search.study import (DROP_BOUNDS, best_single_technique, choose_best, constraint_values,  # noqa: E402
                                  load_result, pareto_front)


def rejudge(url: str) -> dict:
    result = load_result(url)
    out = {"study": url, "objectives": list(result.objectives), "max_drop": result.max_drop,
           "stored_rule": result.drop_bound, "trials": len(result.trials), "rules": {}}
    for rule in DROP_BOUNDS:
        records = [r if r.metrics is None or r.constraints is None else
                   dataclasses.replace(r, constraints=tuple(constraint_values(r.metrics, result.target, result.max_drop, rule)))
                   for r in result.trials]
        front = pareto_front(records, result.directions)
        ref = best_single_technique(records, result.directions)
        best = choose_best(front, ref, result.directions)
        out["rules"][rule] = {
            "front": [{"trial": t.number, "recipe": t.label(), "values": dict(zip(result.objectives, t.values)),
                       "drop_ci95": list(t.metrics.metric_drop_ci) if t.metrics.metric_drop_ci else None}
                      for t in front],
            "single_technique": ref.number if ref else None,
            "pick": best.number if best else None,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", help="optuna storage URLs of edgeopt studies")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    rows = [rejudge(u) for u in args.studies]
    for r in rows:
        print(f"\n{r['study']}  ({r['trials']} trials, objectives {','.join(r['objectives'])}, "
              f"max drop {r['max_drop']}, run with rule {r['stored_rule']!r})")
        print(f"{'rule':<9} {'front':>5}  {'ref':>4}  {'pick':>4}  front points (trial: values, drop CI)")
        for rule, d in r["rules"].items():
            pts = "; ".join(f"{p['trial']}: " + ", ".join(f"{v:.5g}" for v in p["values"].values())
                            + (f" [{p['drop_ci95'][0]:+.3f}, {p['drop_ci95'][1]:+.3f}]" if p["drop_ci95"] else "")
                            for p in d["front"])
            print(f"{rule:<9} {len(d['front']):>5}  {str(d['single_technique']):>4}  {str(d['pick']):>4}  {pts}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
