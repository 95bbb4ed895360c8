"""`edgeopt search`: alias of `edgeopt optimize --target ...` (the target-aware multi-objective search)."""

from __future__ import annotations

import re

import typer

from ..errors import ConfigError


def parse_duration(text: str | None) -> float | None:
    """'20m', '90s', '1h', '1h30m' or plain seconds -> seconds."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        seconds = float(raw)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", raw)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != raw.replace(" ", ""):
            raise ConfigError(f"--time-budget must look like '20m', '90s', '1h30m' or a number of seconds; got {text!r}")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"--time-budget must be positive; got {text!r}")
    return seconds


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        model: str = typer.Argument(..., help="Model file (.onnx, .tflite, .pt2)."),
        data: str = typer.Option(..., "--data", "-d", help="Data (.npz, .csv, image folder)."),
        target: str = typer.Option("host", "--target", "-t", help="Target name (see `edgeopt targets`) or YAML file."),
        max_drop: str = typer.Option("1%", "--max-drop", help="Largest allowed metric drop: '1%', '0.5pt' or 0.01."),
        objective: str = typer.Option("latency,size", "--objective", help="Comma-separated: latency, size, ram, energy, drop, metric."),
        techniques: str = typer.Option(None, "--techniques", help="Comma-separated passes or families to search (default: all)."),
        trials: int = typer.Option(20, "--trials", help="Finished trials the study should hold."),
        time_budget: str = typer.Option(None, "--time-budget", help="Stop after this long: '20m', '1h', seconds."),
        study: str = typer.Option(None, "--study", help="Study store URL (default sqlite:///OUT/study.db); any optuna database URL."),
        study_name: str = typer.Option("edgeopt", "--study-name", help="Name of the study inside the store."),
        resume: bool = typer.Option(False, "--resume", help="Continue an existing study (also: join it as another worker)."),
        split: str = typer.Option(None, "--split", help="Row ranges, e.g. 'calib=0:500,train=500:2500,tune=2500:3500,eval=3500:' (default: thirds calib/tune/eval)."),
        metric: str = typer.Option("top1", "--metric", help="Task metric (top1, auc, mse, agreement, ...)."),
        sampler: str = typer.Option("tpe", "--sampler", help="tpe, nsga2 or random."),
        drop_bound: str = typer.Option("upper", "--drop-bound", help="Judge --max-drop on the drop's 95% CI 'upper' end (default: guards against lucky tune scores) or its 'estimate'."),
        seed: int = typer.Option(0, "--seed"),
        x_key: str = typer.Option("x", "--x-key", help="Array name of the inputs in an .npz file."),
        y_key: str = typer.Option("y", "--y-key", help="Array name of the labels in an .npz file."),
        out: str = typer.Option(..., "--out", "-o", help="Output folder: model.onnx, recipe.yaml, report.json, report.html, study.db."),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
        output: str = typer.Option(None, "--output", help="The model output the metric scores (name or index; default the first)."),
    ):
        """Alias of `edgeopt optimize --target ...`: search recipes of compression passes for TARGET
        (Pareto front of the objectives under the accuracy and memory budgets), write the chosen
        model. Exit code 2 if nothing meets the budgets (the report is written)."""
        from .cmd_optimize import _output_arg, run_searching

        parse_duration(time_budget)   # same accepted forms as before the alias, checked early
        run_searching(model, data=data, out=out, metric=metric, max_drop=max_drop, split=split, techniques=techniques,
                      time_budget=parse_duration(time_budget), seed=seed, x_key=x_key, y_key=y_key, target=target,
                      objective=objective, trials=trials, study=study, study_name=study_name, resume=resume,
                      sampler=sampler, json_output=json_out, drop_bound=drop_bound, output=_output_arg(output))


def _print_front(result, con) -> None:
    from rich.table import Table

    from ..target import format_bytes

    table = Table(title=f"Pareto front on {result.target.name} ({len(result.trials)} trials)")
    for col in ("trial", "recipe", result.metric or "metric", "drop", "latency", "size", "RAM"):
        table.add_column(col)
    for t in result.pareto:
        m = t.metrics
        mark = " *" if result.best and t.number == result.best.number else ""
        table.add_row(f"{t.number}{mark}", t.label(), f"{m.metric_value:.4f}" if m.metric_value is not None else "-",
                      f"{m.metric_drop:.4f}" if m.metric_drop is not None else "-",
                      f"{m.latency_ms:.4g} ms ({m.latency_method})" if m.latency_ms is not None else "-",
                      format_bytes(m.size_bytes), format_bytes(m.ram_bytes))
    con.print(table)
