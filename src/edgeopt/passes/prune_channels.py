"""Structured channel pruning with real speedup: whole channels are removed, so the exported model
is physically smaller (fewer output channels per Conv/Gemm) and dense runtimes run it faster.

Dependencies between layers (residual adds, depthwise groups, flatten into a dense layer) are
resolved by Torch-Pruning's DepGraph rather than by hand-written graph surgery. The classifier
layer (the last Linear) keeps its outputs. Accuracy is recovered by distillation fine-tuning.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigError
from ..training import fine_tune_config, recover
from .base import Choice, FloatRange, IntRange, Pass, PassContext, PassResult

IMPORTANCES = ("l1", "l2", "taylor")
SCOPES = ("global", "layer")


def macs_and_params(module, example) -> tuple[int, int]:
    """Multiply-accumulates and parameter count of a torch module for one example batch (Torch-Pruning's counter)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def conv_channels(module) -> dict[str, int]:
    """Output channels (features) of every Conv/Linear layer, by module name."""
    from torch import nn

    return {name: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
            for name, m in module.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


class PruneChannels(Pass):
    """Remove a share of channels from every prunable layer group (DepGraph), then fine-tune."""

    name: ClassVar[str] = "prune.channels"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "structured channel pruning (Torch-Pruning DepGraph) + distillation fine-tuning"

    def __init__(self, *, ratio: float = 0.25, importance: str = "l2", scope: str = "layer",
                 epochs: int = 3, lr: float = 5e-4, round_to: int = 1):
        self.ratio = ratio
        self.importance = importance
        self.scope = scope
        self.epochs = epochs
        self.lr = lr
        self.round_to = round_to

    @classmethod
    def search_space(cls):
        return {"ratio": FloatRange(0.1, 0.6), "importance": Choice(IMPORTANCES), "scope": Choice(SCOPES),
                "epochs": IntRange(0, 10)}

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise ConfigError(f"{self.name}: parameter 'ratio' must be a fraction in (0, 1); got {self.ratio!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"{self.name}: parameter 'round_to' must be an int >= 1; got {self.round_to!r}")
        fine_tune_config(self.epochs, self.lr).validate()

    def _importance(self):
        import torch_pruning as tp

        if self.importance == "l1":
            return tp.importance.MagnitudeImportance(p=1)
        if self.importance == "l2":
            return tp.importance.MagnitudeImportance(p=2)
        return tp.importance.TaylorImportance()

    def run(self, model, ctx: PassContext) -> PassResult:
        import torch
        import torch_pruning as tp
        from torch import nn

        from ..torch_twin import example_input, export, to_torch
        from ..training import log_probabilities, training_data

        module = to_torch(model)
        example = example_input(model, batch=1, seed=ctx.seed)
        macs_before, params_before = macs_and_params(module, example)
        channels_before = conv_channels(module)
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        ignored = linears[-1:]  # the classifier's outputs are the task's classes
        pruner = tp.pruner.MetaPruner(
            module, example, importance=self._importance(), pruning_ratio=float(self.ratio),
            global_pruning=self.scope == "global", max_pruning_ratio=0.9, ignored_layers=ignored,
            round_to=self.round_to if self.round_to > 1 else None)
        if self.importance == "taylor":
            # Taylor importance reads gradients: one batch of the task (or distillation) loss.
            train, _ = training_data(model, ctx)
            torch.manual_seed(ctx.seed)
            x = torch.from_numpy(train.x[:128].astype("float32"))
            out = module(x)
            if train.has_labels:
                loss = torch.nn.functional.nll_loss(log_probabilities(out), torch.from_numpy(train.y[:128].astype("int64")))
            else:
                target = torch.from_numpy(model.predict(train.x[:128])[0])
                loss = torch.nn.functional.mse_loss(out, target)
            module.zero_grad()
            loss.backward()
        pruner.step()
        module.zero_grad(set_to_none=True)
        macs_after, params_after = macs_and_params(module, example)
        report = recover(module, model, ctx, fine_tune_config(self.epochs, self.lr, **ctx.options.get("fine_tune", {})))
        new = export(module, model, self.record(), seed=ctx.seed)
        channels_after = conv_channels(module)
        return PassResult(new, {
            "macs_before": macs_before, "macs_after": macs_after, "mac_reduction": 1 - macs_after / max(1, macs_before),
            "params_before": params_before, "params_after": params_after,
            "channels_removed": {k: channels_before[k] - channels_after.get(k, 0) for k in channels_before
                                 if channels_before[k] != channels_after.get(k, 0)},
            "fine_tune": report.to_dict(),
        })
