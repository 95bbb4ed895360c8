"""`edgeopt` entry point: discovers command modules, turns EdgeOptError into one line + exit code.

Nothing heavy (torch, onnxruntime, onnx) is imported here or at the top of a command module:
``edgeopt --help`` must answer in well under a second.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from .. import __version__
from ..errors import EdgeOptError

app = typer.Typer(
    name="edgeopt",
    help="Make trained neural networks small and fast enough for edge devices, and prove they still work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool):
    if value:
        typer.echo(f"edgeopt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    _state["debug"] = debug


def _discover() -> None:
    from . import __path__ as cli_path

    for info in sorted(pkgutil.iter_modules(cli_path), key=lambda i: i.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__package__}.{info.name}").register(app)


_discover()


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (1 for user errors, BudgetError's 2, 130 on Ctrl-C)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        app(args=argv, standalone_mode=False)
    except EdgeOptError as e:
        if debug:
            raise
        typer.secho(f"error: {type(e).__name__}: {e}", err=True, fg="red")
        return e.exit_code
    except KeyboardInterrupt:
        typer.secho("interrupted: no partial output was written", err=True, fg="yellow")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0)
    except typer.Abort:
        return 130
    except Exception as e:
        # Usage errors (unknown option, bad value): click's ClickException, which typer >= 0.2x
        # vendors as typer._click instead of depending on click, so it is matched by what it does.
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return 0


def main() -> None:
    sys.exit(run())
