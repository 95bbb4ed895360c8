"""``edgeopt optimize`` with a target: run the search, rebuild and check the chosen model, write it.

The search (:func:`edgeopt.search.run_search`) compares candidates on the *tune* rows. This module
turns its result into what a user ships: the chosen trial's recipe is replayed with
:func:`edgeopt.optimizer.replay` (the same function ``edgeopt apply`` uses, so the written model
and a later ``apply`` are the same build), the rebuilt model must reproduce the figure the search
recorded, and it is then scored once on the held-out *eval* rows, which no pass and no search
decision ever saw. The held-out figures are stored in the study too, so ``edgeopt report`` can
re-render everything from the store alone.

>>> import edgeopt                                                                    # doctest: +SKIP
>>> res = edgeopt.optimize("kws.onnx", data="kws.npz", target="cortex-m7", max_drop=0.01)   # doctest: +SKIP
>>> res.best.label(), len(res.pareto); res.save("out/")                               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BudgetError, ConfigError, VerificationError
from ..profiling import matmul_dominated
from .study import (SearchOptions, best_single_technique, load_result, make_storage, no_worse, run_search,
                    single_technique_trials)

HOLDOUT_KEY = "edgeopt_holdout"


def single_technique_comparison(result) -> dict | None:
    """The best single-technique trial and whether the chosen trial is at least as good on every objective."""
    ref = best_single_technique(result.trials, result.directions)
    if ref is None:
        return None
    out = {"trial": ref.number, "recipe": ref.label(), "values": dict(zip(result.objectives, ref.values)),
           "single_technique_trials": len(single_technique_trials(result.trials))}
    if result.best is not None:
        out["chosen_values"] = dict(zip(result.objectives, result.best.values))
        out["chosen_at_least_as_good_on_every_objective"] = no_worse(result.best.values, ref.values, result.directions)
    return out


@dataclass
class SearchOutcome:
    """What ``optimize(..., target=...)`` returns: the search result plus the rebuilt, checked model.

    ``best`` and ``pareto`` are the search's trial records (``best.label()``, ``best.metrics``);
    ``model`` is the chosen model (None when nothing met the budgets); ``held_out`` its figures on
    the eval rows.
    """

    search: Any                                   # SearchResult
    model: Any = None                             # ModelHandle
    recipe: Any = None                            # Recipe, with the data rows and context recorded
    held_out: Mapping[str, Any] | None = None
    data_record: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def best(self):
        return self.search.best

    @property
    def pareto(self):
        return self.search.pareto

    @property
    def trials(self):
        return self.search.trials

    @property
    def report_data(self) -> dict:
        from .report_data import budgets, trials_table

        return {
            "edgeopt_report": 1, "kind": "search",
            "model": {"source": self.source},
            "data": dict(self.data_record),
            "search": self.search.to_dict(),
            "chosen": None if self.best is None else {
                "trial": self.best.number, "recipe": self.best.label(), "metrics": self.best.metrics.to_dict(),
                "size_bytes": self.model.size_bytes if self.model is not None else None},
            "held_out": dict(self.held_out) if self.held_out else None,
            "single_technique": single_technique_comparison(self.search),
            "pareto": [t.number for t in self.pareto],
            "budgets": budgets(self.search),
            "trials_table": trials_table(self.search),
        }

    def report(self, path: str | os.PathLike | None = None) -> dict:
        """The report as a dict; with ``path`` also write it (``.html`` page or ``.json``) atomically."""
        data = self.report_data
        if path is not None:
            from .._io import write_text_atomic
            from .._json import to_jsonable

            path = Path(path)
            text = render_outcome_html(self) if path.suffix.lower() in (".html", ".htm") else \
                json.dumps(to_jsonable(data), indent=2) + "\n"
            write_text_atomic(path, text)
        return data

    def save(self, out: str | os.PathLike) -> Path:
        """Write model.onnx, recipe.yaml, report.json, report.html into ``out``.

        The files are built in a temporary folder beside ``out`` and each is moved into place
        with an atomic rename (the folder itself may hold the study's SQLite file, so it is not
        swapped as a whole). A model is re-loaded from its bytes and checked to run before it is
        written; without a chosen model, a stale model.onnx / recipe.yaml from an earlier run is
        removed so the folder never pairs a new report with an old model.
        """
        from .._json import to_jsonable
        from ..model import ModelHandle

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a file; give a folder")
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            names = ["report.json", "report.html"]
            if self.model is not None:
                fresh = ModelHandle(self.model.onnx_bytes, name="emitted")
                outputs = fresh.run(fresh.example_inputs(batch=1))
                if not all(np.all(np.isfinite(o)) for o in outputs):
                    raise VerificationError("the chosen model produces non-finite outputs; not written")
                (tmp / "model.onnx").write_bytes(self.model.onnx_bytes)
                (tmp / "recipe.yaml").write_text(self.recipe.to_yaml(), encoding="utf-8")
                names = ["model.onnx", "recipe.yaml"] + names
            (tmp / "report.json").write_text(json.dumps(to_jsonable(self.report_data), indent=2) + "\n", encoding="utf-8")
            (tmp / "report.html").write_text(render_outcome_html(self), encoding="utf-8")
            if self.model is None:
                for stale in ("model.onnx", "recipe.yaml"):
                    (out / stale).unlink(missing_ok=True)
            for name in names:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def _ci_text(ci) -> str:
    """' (95% CI lo..hi)', or nothing for a metric scored on all rows at once (cosine: no per-row
    interval; NaN in memory, null once read back from report.json)."""
    from ..evaluation import has_interval

    if not has_interval(ci):
        return ""
    return f" (95% CI {ci[0]:.4f}..{ci[1]:.4f})"


def render_outcome_html(outcome: SearchOutcome) -> str:
    """The search's report page plus the held-out check and the single-technique comparison."""
    import html as html_lib

    from .report_data import render_html

    e = html_lib.escape
    parts = ["<h2>Held-out check of the chosen model</h2>"]
    h = outcome.held_out
    if h:
        parts.append(
            f"<p>Rebuilt from its recipe and scored on the eval rows {e(str(h['rows']))} ({h['samples']} rows; never used "
            f"for calibration, training or any search decision): {e(h['metric'])} {h['value']:.4f} vs {h['baseline']:.4f} "
            f"for the original, drop {h['drop']:.4f}{_ci_text(h.get('drop_ci95'))}; "
            f"max drop {h['max_drop']:.4g}: {'within' if h['within_budget'] else '<b>outside</b>'} the budget on these rows. "
            f"Rebuild: {e(h['reproduction'])}.</p>")
    else:
        parts.append("<p>No chosen model (no candidate met every budget).</p>")
    single = single_technique_comparison(outcome.search)
    if single:
        verdict = single.get("chosen_at_least_as_good_on_every_objective")
        parts.append(
            f"<h2>Against the best single technique</h2><p>Best single-technique trial: {single['trial']} "
            f"({e(single['recipe'])}), {e(json.dumps(single['values']))}; chosen: {e(json.dumps(single.get('chosen_values')))}. "
            f"Chosen at least as good on every objective: <b>{'yes' if verdict else 'no'}</b> "
            f"({single['single_technique_trials']} single-technique trials).</p>")
    d = outcome.data_record
    if d:
        parts.append(f"<p class='note'>Data: {e(str(d.get('source')))}, row ranges {e(json.dumps(d.get('splits')))}.</p>")
    page = render_html(outcome.search)
    return page.replace("</body></html>", "".join(parts) + "</body></html>")


def _default_splits(n: int) -> dict[str, str]:
    third = n // 3
    return {"calib": f"0:{third}", "tune": f"{third}:{2 * third}", "eval": f"{2 * third}:"}


def optimize_with_search(
    model: Any,
    data: Any,
    *,
    target: Any = "host",
    objectives: Sequence[str] | str | None = None,
    trials: int | None = None,
    study: str | None = None,
    study_name: str = "edgeopt",
    resume: bool = False,
    sampler: str = "tpe",
    drop_bound: str = "upper",
    techniques: str | Sequence[str] | None = None,
    metric: str = "top1",
    max_drop: float = 0.01,
    splits: str | Mapping[str, Any] | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    x_key: str = "x",
    y_key: str | None = "y",
    output: str | int | None = None,
) -> SearchOutcome:
    """Search recipes for ``target``, then rebuild, check and (with ``out``) write the chosen model.

    ``splits`` names disjoint row ranges ``calib`` (calibration), ``tune`` (the search compares
    candidates on it), ``eval`` (held-out check of the chosen model) and optionally ``train``
    (fine-tuning passes; without it they train on the calibration rows). Default: thirds
    calib / tune / eval. Raises BudgetError (exit code 2) after writing the report when no
    candidate meets every budget.
    """
    from ..data import Dataset, fit_to_model, load_data, parse_split_spec, shuffle_seed
    from ..evaluation import metric_spec, paired_difference, score
    from ..model import load_with_data
    from ..optimizer import replay
    from ..recipe import Recipe
    from ..target import Target
    from .._json import to_jsonable
    from ..passes.base import untrainable_reason
    from .space import SearchSpace, is_expensive

    spec = metric_spec(metric)
    dataset = data if isinstance(data, Dataset) else load_data(data, x_key=x_key, y_key=y_key)
    handle = load_with_data(model, dataset)  # an nn.Module without example inputs is traced on the data
    source = str(model) if isinstance(model, (str, os.PathLike)) else handle.name
    scored = handle.output_name(output)
    dataset = fit_to_model(dataset, handle)
    ranges = parse_split_spec(splits) if isinstance(splits, str) else dict(splits or {}) or _default_splits(len(dataset))
    missing = [k for k in ("calib", "tune", "eval") if k not in ranges]
    if missing:
        raise ConfigError(f"a search needs row ranges calib, tune and eval (optional train), e.g. "
                          f"'calib=0:500,train=500:2500,tune=2500:3500,eval=3500:'; missing {missing} in {ranges}")
    parts = dataset.splits(**ranges)
    target = Target.parse(target)
    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(",") if o.strip()]
    objectives = tuple(objectives or ("latency", "size"))
    if isinstance(techniques, str):
        techniques = [t.strip() for t in techniques.split(",") if t.strip()]
    space = SearchSpace.from_names(techniques or None)
    if not techniques and untrainable_reason(handle):
        # the default space: leave out what cannot run rather than spend trials on refusals
        space = SearchSpace(tuple(p for p in space.passes if p.stage != "torch"), space.fixed, space.required)
    if not matmul_dominated(handle.proto()):
        # int8 of the weighted layers only is for transformers' outlier activations; a conv net runs
        # int8 end to end, so its trials do not spend a dimension on it
        space = SearchSpace(space.passes, {"quantize_int8__ops": "all", **space.fixed}, space.required)
    if study is None and out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        study = f"sqlite:///{Path(out).resolve() / 'study.db'}"
    data_record = {"source": str(data) if isinstance(data, (str, os.PathLike)) else dataset.name, "x_key": x_key,
                   "y_key": y_key, "splits": {k: list(v.rows) for k, v in parts.items()}, "shuffle": shuffle_seed(ranges),
                   "output": scored}

    budget_error = None
    try:
        result = run_search(handle, data_splits={k: parts.get(k) for k in ("calib", "train", "tune")}, target=target,
                            space=space, objectives=objectives, max_drop=max_drop, trials=trials or 20,
                            time_budget=time_budget, storage=study, resume=resume, seed=seed, metric=metric,
                            out_dir=None, progress=progress, options=SearchOptions(sampler=sampler, study_name=study_name, drop_bound=drop_bound,
                                                                  output=scored))
    except BudgetError as e:
        if getattr(e, "result", None) is None:
            raise
        budget_error, result = e, e.result
    result.storage_url = study
    outcome = SearchOutcome(result, data_record=data_record, source=source)

    if result.best is not None:
        best = result.best
        searched = best.to_recipe()
        recipe = Recipe(searched.steps, searched.seed,
                        {**data_record, "context": "search", "target": target.to_dict(), "metric": spec.name},
                        {"trial": best.number, "target": target.name, "objectives": list(objectives), "max_drop": max_drop})
        built = replay(handle, recipe, dataset)
        tune, evald = parts["tune"], parts["eval"]
        tune_value = score(metric, built.predict(tune.x, outputs=[scored])[0], tune.y, inputs=tune.x,
                           reference=handle.predict(tune.x, outputs=[scored])[0]).value
        stated = best.metrics.metric_value
        torch_stage = any(is_expensive(type(p)) for p in recipe.passes)
        if abs(tune_value - stated) > 1e-12:
            if not torch_stage:
                raise VerificationError(f"trial {best.number} ({best.label()}) rebuilt from its recipe scores {tune_value} "
                                        f"on the tune rows, but the search recorded {stated}; not written")
            how = (f"recipe has training passes: retrained, tune {spec.name} {tune_value:.4f} vs {stated:.4f} in the search "
                   "(PyTorch training is reproducible only up to float nondeterminism)")
        else:
            how = f"reproduces the search's tune {spec.name} exactly ({stated:.4f})" + \
                  (" (ONNX-only recipe: byte-for-byte with `edgeopt apply`)" if not torch_stage else "")
        ref_eval = handle.predict(evald.x, outputs=[scored])[0]
        base_eval = score(metric, ref_eval, evald.y, inputs=evald.x, reference=ref_eval)
        cand_eval = score(metric, built.predict(evald.x, outputs=[scored])[0], evald.y, inputs=evald.x, reference=ref_eval)
        sign = -1.0 if spec.higher_is_better else 1.0
        if cand_eval.per_sample is not None and base_eval.per_sample is not None:
            diff = paired_difference(cand_eval, base_eval)
            drop, ci = sign * diff.value, sorted((sign * diff.ci_low, sign * diff.ci_high))
        else:
            drop, ci = sign * (cand_eval.value - base_eval.value), [float("nan"), float("nan")]
        outcome.model, outcome.recipe = built, recipe
        outcome.held_out = {"metric": spec.name, "rows": list(evald.rows), "samples": len(evald),
                            "value": float(cand_eval.value), "baseline": float(base_eval.value), "drop": float(drop),
                            "drop_ci95": [float(c) for c in ci], "max_drop": float(max_drop),
                            "within_budget": bool(drop <= max_drop + 1e-12), "reproduction": how,
                            "size_bytes": built.size_bytes, "trial": best.number}
        if study is not None:   # beside the trials, so `edgeopt report` re-renders it from the store
            import optuna

            store = make_storage(study, SearchOptions(study_name=study_name))
            optuna.load_study(study_name=study_name, storage=store).set_user_attr(
                HOLDOUT_KEY, to_jsonable({"held_out": outcome.held_out, "data": data_record, "source": source}))

    if out is not None:
        outcome.save(out)
    if budget_error is not None:
        err = BudgetError(f"{budget_error}" + (f"; report written to {out}" if out is not None else ""))
        err.result = outcome
        raise err
    return outcome


def load_outcome(storage: str, study_name: str = "edgeopt") -> SearchOutcome:
    """Rebuild the report side of a :class:`SearchOutcome` from the study store (no model)."""
    import optuna

    result = load_result(storage, study_name)
    stored = optuna.load_study(study_name=study_name, storage=make_storage(storage, SearchOptions())).user_attrs.get(HOLDOUT_KEY) or {}
    return SearchOutcome(result, held_out=stored.get("held_out"), data_record=stored.get("data") or {}, source=stored.get("source"))
