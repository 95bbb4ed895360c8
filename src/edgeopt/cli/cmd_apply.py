"""`edgeopt apply MODEL --recipe DIR/recipe.yaml --data D --out DIR2`: replay a recipe byte for byte."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("apply")
    def apply_command(
        model: str = typer.Argument(..., help="The original model file the recipe was made from."),
        recipe: str = typer.Option(..., "--recipe", help="recipe.yaml written by `edgeopt optimize`."),
        out: str = typer.Option(..., "--out", help="Output folder: model.onnx and recipe.yaml."),
        data: Optional[str] = typer.Option(None, "--data", help="The data file the recipe calibrated on (its rows are in the recipe)."),
        x_key: Optional[str] = typer.Option(None, "--x-key", help="Array name of the inputs (default: from the recipe)."),
        y_key: Optional[str] = typer.Option(None, "--y-key", help="Array name of the labels (default: from the recipe)."),
        json_output: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
    ):
        """Re-run a recipe: same passes, parameters, seed and calibration rows -> the same model.onnx."""
        import hashlib
        import shutil
        import tempfile
        from pathlib import Path

        from ..optimizer import _replace_dir, replay
        from ..recipe import Recipe

        loaded = Recipe.load(recipe)
        result = replay(model, loaded, data, x_key=x_key, y_key=y_key)
        dest = Path(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            (tmp / "model.onnx").write_bytes(result.onnx_bytes)
            (tmp / "recipe.yaml").write_text(loaded.to_yaml(), encoding="utf-8")
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        summary = {"model": str(dest / "model.onnx"), "size_bytes": result.size_bytes,
                   "sha256": hashlib.sha256(result.onnx_bytes).hexdigest(),
                   "steps": [s["pass"] for s in loaded.to_dict()["steps"]], "seed": loaded.seed}
        if json_output:
            from ._common import emit_json

            emit_json(summary)
            return
        from ._common import console

        console().print(f"wrote {summary['model']} ({summary['size_bytes']:,} B, sha256 {summary['sha256'][:16]}…) "
                        f"from {len(summary['steps'])} step(s): {', '.join(summary['steps'])}")
