"""`edgeopt optimize MODEL --data D --max-drop 0.5pt --out DIR`: accuracy-guarded compression, measured.

With ``--target``, ``--trials``, ``--study`` or ``--objective`` it runs the target-aware
multi-objective search over every registered pass (``edgeopt.search``); without them, the fixed
list of post-training quantization candidates.
"""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("optimize")
    def optimize_command(
        model: str = typer.Argument(..., help="Model file (.onnx, .tflite, .pt2)."),
        data: str = typer.Option(..., "--data", help="Data (.npz, .csv, image folder): calibration and held-out rows."),
        out: str = typer.Option(..., "--out", help="Output folder: model.onnx, recipe.yaml, report.json, report.html."),
        metric: str = typer.Option("top1", "--metric", help="top1, top5, auc, mse, spearman, or without labels: agreement, cosine, deviation (one value per row)."),
        max_drop: str = typer.Option("0.5pt", "--max-drop", help="Largest allowed metric drop on held-out rows: '0.5pt', '1%' or a fraction '0.005'."),
        split: Optional[str] = typer.Option(None, "--split", help="Disjoint row ranges, e.g. 'calib=0:500,eval=500:' (optional tune=...). Default: first half calib, second half eval."),
        techniques: Optional[str] = typer.Option(None, "--techniques", help="Comma-separated subset of int8,fp16,int4,mixed,dynamic (default: int8,fp16,int4,mixed; int8 includes dynamic int8 for MatMul-heavy models)."),
        time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Stop trying new candidates after this long, e.g. '10m'."),
        goal: str = typer.Option("latency", "--goal", help="'latency': fastest within budget (never slower than the input); 'size': smallest."),
        seed: int = typer.Option(0, "--seed", help="Seed recorded in the recipe."),
        x_key: str = typer.Option("x", "--x-key", help="Array name of the inputs in an .npz file."),
        y_key: str = typer.Option("y", "--y-key", help="Array name of the labels in an .npz file."),
        bench_rounds: int = typer.Option(5, "--bench-rounds", help="Interleaved benchmark rounds (fresh processes)."),
        quick: bool = typer.Option(False, "--quick", help="One int8 variant (+ mixed precision if needed), no confirmation benchmark."),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="Search for this device (see `edgeopt targets`) or a target YAML file."),
        objective: Optional[str] = typer.Option(None, "--objective", help="Search objectives, comma-separated: latency, size, ram, energy, drop, metric (default latency,size)."),
        trials: Optional[int] = typer.Option(None, "--trials", help="Search: finished trials the study should hold (default 20)."),
        study: Optional[str] = typer.Option(None, "--study", help="Search: study store URL (default sqlite:///OUT/study.db), e.g. postgresql://user@host/db."),
        study_name: str = typer.Option("edgeopt", "--study-name", help="Search: name of the study inside the store."),
        resume: bool = typer.Option(False, "--resume", help="Search: continue the study (or join it as another worker)."),
        sampler: str = typer.Option("tpe", "--sampler", help="Search: tpe, nsga2 or random."),
        drop_bound: str = typer.Option("upper", "--drop-bound", help="Search: judge --max-drop on the drop's 95% CI 'upper' end (default: guards against lucky tune scores) or its 'estimate'."),
        json_output: bool = typer.Option(False, "--json", help="Print report.json on stdout instead of tables."),
        output: Optional[str] = typer.Option(None, "--output", help="The model output the metric scores (name or index; default the first)."),
    ):
        """Compress within an accuracy budget: PTQ candidates by default; with --target / --trials /
        --study / --objective, the multi-objective search over every pass against the target's budgets.
        Exit code 2 (report still written) when nothing meets the budgets."""
        from ..errors import BudgetError, ConfigError
        from ..evaluation import metric_spec
        from ..optimizer import optimize
        from ._common import parse_fraction

        if any(v is not None for v in (target, objective, trials, study)):
            run_searching(model, data=data, out=out, metric=metric, max_drop=max_drop, split=split, techniques=techniques,
                          time_budget=time_budget, seed=seed, x_key=x_key, y_key=y_key, target=target, objective=objective,
                          trials=trials, study=study, study_name=study_name, resume=resume, sampler=sampler,
                          json_output=json_output, drop_bound=drop_bound, output=_output_arg(output))
            return

        spec = metric_spec(metric)
        if spec.name.startswith("top") or spec.name == "agreement":
            drop = parse_fraction(max_drop, option="--max-drop")
        else:
            try:
                drop = float(max_drop)
            except ValueError:
                raise ConfigError(f"--max-drop for metric {spec.name!r} is a number in the metric's units; got {max_drop!r}") from None
        if bench_rounds < 1:
            raise ConfigError(f"--bench-rounds must be >= 1; got {bench_rounds}")
        try:
            result = optimize(model, data=data, metric=metric, max_drop=drop, splits=split, techniques=techniques,
                              time_budget=time_budget, seed=seed, out=out, progress=True, goal=goal,
                              x_key=x_key, y_key=y_key, bench_rounds=bench_rounds, quick=quick,
                              output=_output_arg(output))
        except BudgetError:
            raise
        if json_output:
            from ..report import public
            from ._common import emit_json

            emit_json(public(result.report_data))
            return
        from ._common import console

        c = console()
        c.print(comparison_table(result.report_data))
        c.print(f"wrote {out}/model.onnx, recipe.yaml, report.json, report.html")


def comparison_table(report: dict):
    """Rich table: original vs chosen (size, latency, load, memory, metric with CI)."""
    from rich.table import Table

    b, c = report["baseline"], report["chosen"]
    metric = report["settings"]["metric"]
    t = Table(title=f"edgeopt optimize: {report['model']['source']} (chosen: {c['name']})")
    t.add_column("")
    t.add_column("original", justify="right")
    t.add_column("optimized", justify="right")
    t.add_column("ratio / diff", justify="right")
    t.add_row("size", f"{b['size_bytes']:,} B", f"{c['size_bytes']:,} B", f"{c['size_ratio']:.3f}x")
    t.add_row("latency (1 thread)", f"{b['bench']['best_round_median_ms']:.4f} ms",
              f"{c['bench']['best_round_median_ms']:.4f} ms", f"{c['latency_ratio']:.3f}x")
    t.add_row("load time", f"{b['bench']['load_ms']:.1f} ms", f"{c['bench']['load_ms']:.1f} ms", "")
    t.add_row("peak memory", f"{b['bench']['peak_rss_bytes'] / 2**20:.1f} MiB", f"{c['bench']['peak_rss_bytes'] / 2**20:.1f} MiB", "")
    be, ce, d = b["eval"], c["eval"], c["difference_eval"]
    t.add_row(f"{metric} (held-out, n={be['samples']})", f"{be['value']:.4f}{_interval(be.get('ci95'), '.3f')}",
              f"{ce['value']:.4f}{_interval(ce.get('ci95'), '.3f')}",
              f"{d['difference']:+.4f}{_interval(d.get('ci95'), '+.4f')}")
    t.caption = ("latency: best-round median of fresh-process rounds; its ratio: both models timed in alternation "
                 "in one process, each at its quiet-phase speed (0.1 quantile of its block medians)")
    fidelity = c.get("fidelity_eval") or {}
    agreement = fidelity.get("top1_agreement")
    if agreement is not None and (metric.startswith("top") or metric == "agreement"):
        t.add_row("top-1 agreement with original", "", f"{agreement:.4f}", "")
    elif fidelity.get("sqnr_db") is not None and metric in ("cosine", "deviation"):
        # an embedding or a probability map has no classes: the argmax agreement would mean nothing
        t.add_row("SQNR vs original", "", f"{fidelity['sqnr_db']:.1f} dB", "")
    return t


def _interval(ci, fmt: str) -> str:
    """' [lo, hi]', or nothing where a metric has no interval (a fidelity score of the model to itself)."""
    from ..evaluation import has_interval

    if not has_interval(ci):
        return ""
    return f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _output_arg(output: str | None) -> str | int | None:
    """--output as given: an index when it is an integer ('1', '-1'), else a name."""
    return int(output) if output is not None and output.lstrip("-").isdigit() else output


def run_searching(model, *, data, out, metric, max_drop, split, techniques, time_budget, seed, x_key, y_key, target,
                  objective, trials, study, study_name, resume, sampler, json_output, drop_bound="upper",
                  output=None) -> None:
    """`edgeopt optimize --target ...` (and its alias `edgeopt search`): search, write, print the front."""
    from ..evaluation import metric_spec
    from ..optimizer import optimize
    from ._common import console, emit_json, parse_fraction

    spec = metric_spec(metric)
    drop = parse_fraction(max_drop, option="--max-drop") if spec.higher_is_better else float(max_drop)
    result = optimize(model, data=data, metric=metric, max_drop=drop, splits=split, techniques=techniques,
                      time_budget=time_budget, seed=seed, out=out, progress=not json_output, x_key=x_key, y_key=y_key,
                      target=target or "host", objectives=objective, trials=trials, study=study, study_name=study_name,
                      resume=resume, sampler=sampler, drop_bound=drop_bound, output=output)
    if json_output:
        emit_json(result.report_data)
        return
    from .cmd_search import _print_front

    c = console()
    _print_front(result.search, c)
    h = result.held_out
    if h:
        c.print(f"chosen: trial {result.best.number} ({result.best.label()}); held-out {h['metric']} {h['value']:.4f} "
                f"(original {h['baseline']:.4f}, drop {h['drop']:.4f} on {h['samples']} eval rows)")
        if warning := held_out_warning(h, result.search.drop_bound):
            c.print(f"[bold yellow]warning:[/] {warning}")
    c.print(f"wrote {out}/model.onnx, recipe.yaml, report.json, report.html")


def held_out_warning(held_out: dict, drop_bound: str) -> str | None:
    """What to tell the user when the chosen model misses the budget on the held-out rows, or None."""
    if held_out.get("within_budget", True):
        return None
    advice = ("search with more tune rows" if drop_bound == "upper"
              else "search with --drop-bound upper (judges the drop's 95% CI upper end) or with more tune rows")
    return (f"the held-out drop {held_out['drop']:.4f} is over --max-drop {held_out['max_drop']:.4g}: the tune rows "
            f"over-estimated this model. Check it on more data before shipping it, or {advice}.")
