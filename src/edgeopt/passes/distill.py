"""Knowledge distillation: fine-tune the model toward its teacher's outputs.

The teacher is ``ctx.teacher`` (the original model, when the optimizer runs a recipe) or else the
input model itself. Loss = temperature-scaled KL to the teacher, plus the task cross-entropy when
the data has labels (weight ``1 - alpha``); unlabeled data works. Used after the other training
passes to recover accuracy, and on its own after ONNX-level edits.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigError
from ..training import AUGMENTATIONS, fine_tune_config, recover
from .base import Choice, FloatRange, IntRange, Pass, PassContext, PassResult


class Distill(Pass):
    """Fine-tune toward the teacher: KL(teacher_T || student_T) * T^2 (+ CE with labels)."""

    name: ClassVar[str] = "distill"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "knowledge distillation fine-tuning from the original model"

    def __init__(self, *, epochs: int = 3, lr: float = 3e-4, temperature: float = 4.0, alpha: float = 0.7,
                 augment: str = "auto"):
        self.epochs = epochs
        self.lr = lr
        self.temperature = temperature
        self.alpha = alpha
        self.augment = augment

    @classmethod
    def search_space(cls):
        return {"epochs": IntRange(1, 10), "temperature": FloatRange(1.0, 8.0), "alpha": FloatRange(0.0, 1.0),
                "augment": Choice(AUGMENTATIONS)}

    def _config(self, ctx: PassContext | None = None):
        overrides = dict(ctx.options.get("fine_tune", {})) if ctx else {}
        overrides.update(temperature=self.temperature, alpha=self.alpha, augment=self.augment)
        return fine_tune_config(self.epochs, self.lr, **overrides)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 1; got {self.epochs!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ConfigError(f"{self.name}: parameter 'temperature' must be > 0; got {self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ConfigError(f"{self.name}: parameter 'alpha' must be in [0, 1]; got {self.alpha!r}")
        self._config().validate()

    def run(self, model, ctx: PassContext) -> PassResult:
        from ..torch_twin import export, to_torch

        module = to_torch(model)
        report = recover(module, model, ctx, self._config(ctx))
        new = export(module, model, self.record(), seed=ctx.seed)
        return PassResult(new, {"teacher": "ctx.teacher" if ctx.teacher is not None else "input model",
                                "fine_tune": report.to_dict()})
