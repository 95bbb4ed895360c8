"""Unstructured magnitude pruning (one-shot or gradual) with sparse storage accounting.

Zeroes the smallest-magnitude weights of every Conv/Linear layer (one global threshold or the same
share per layer), then fine-tunes with the zeros held fixed. Gradual pruning raises the sparsity
each epoch along Zhu & Gupta's cubic schedule.

Honest note: the exported ONNX model still stores dense tensors, and dense runtimes (ONNX Runtime,
TFLite, CMSIS-NN) run it exactly as fast as before. What shrinks is the *stored* size in a sparse
format (see :mod:`edgeopt.storage`), and what follows can exploit it (weight clustering, Huffman
coding, sparse kernels).
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigError
from ..training import Callbacks, fine_tune_config, recover
from .base import Choice, FloatRange, IntRange, Pass, PassContext, PassResult

SCHEDULES = ("one_shot", "gradual")
SCOPES = ("global", "layer")
DENSE_RUNTIME_NOTE = ("unstructured sparsity: dense runtimes (ONNX Runtime, TFLite) do not run this model faster; "
                      "the saving is in stored size with a sparse format")


def prunable_weights(module) -> dict:
    """Weight parameters of Conv/Linear layers, by module name."""
    from torch import nn

    return {name: m.weight for name, m in module.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def magnitude_masks(weights: dict, sparsity: float, scope: str) -> dict:
    """Boolean keep-masks removing the ``sparsity`` share of smallest |w| (globally or per layer)."""
    import torch

    if sparsity <= 0:
        return {k: torch.ones_like(w, dtype=torch.bool) for k, w in weights.items()}
    if scope == "global":
        everything = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
        k = int(round(sparsity * everything.numel()))
        threshold = torch.kthvalue(everything, max(1, k)).values if k > 0 else -1
        return {name: w.detach().abs() > threshold for name, w in weights.items()}
    masks = {}
    for name, w in weights.items():
        flat = w.detach().abs().reshape(-1)
        k = int(round(sparsity * flat.numel()))
        threshold = torch.kthvalue(flat, max(1, k)).values if k > 0 else -1
        masks[name] = w.detach().abs() > threshold
    return masks


def ramp_epochs(epochs: int) -> int:
    """Epochs over which gradual pruning reaches its target; the rest fine-tune at the target."""
    return max(1, (2 * epochs + 2) // 3)


def cubic_sparsity(final: float, epoch: int, epochs: int) -> float:
    """Zhu & Gupta (2017): s_t = s_f * (1 - (1 - t / n)^3), reaching ``final`` at epoch ``epochs - 1``."""
    if epochs <= 1:
        return final
    progress = min(1.0, (epoch + 1) / epochs)
    return final * (1 - (1 - progress) ** 3)


class PruneMagnitude(Pass):
    """Zero the smallest weights (one-shot or gradual), keep them zero while fine-tuning."""

    name: ClassVar[str] = "prune.magnitude"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "unstructured magnitude pruning; smaller stored size, same dense latency"

    def __init__(self, *, sparsity: float = 0.8, schedule: str = "one_shot", scope: str = "global",
                 epochs: int = 3, lr: float = 5e-4):
        self.sparsity = sparsity
        self.schedule = schedule
        self.scope = scope
        self.epochs = epochs
        self.lr = lr

    @classmethod
    def search_space(cls):
        # epochs before schedule: whether 'gradual' is allowed depends on it (see param_applies)
        return {"sparsity": FloatRange(0.3, 0.95), "epochs": IntRange(0, 10), "schedule": Choice(SCHEDULES),
                "scope": Choice(SCOPES)}

    @classmethod
    def param_applies(cls, name, chosen):
        # 'gradual' prunes during fine-tuning: with no epochs validate() refuses it, so the search
        # keeps the default one-shot schedule instead of proposing it
        if name == "schedule":
            return chosen.get("epochs", 3) >= 1
        return True

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.sparsity, (int, float)) or not 0 < self.sparsity < 1:
            raise ConfigError(f"{self.name}: parameter 'sparsity' must be a fraction in (0, 1); got {self.sparsity!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        if self.schedule == "gradual" and self.epochs < 1:
            raise ConfigError(f"{self.name}: schedule 'gradual' prunes during fine-tuning and needs epochs >= 1; got {self.epochs}")
        fine_tune_config(self.epochs, self.lr).validate()

    def run(self, model, ctx: PassContext) -> PassResult:
        import torch

        from ..storage import model_storage, onnx_weights
        from ..torch_twin import export, to_torch

        module = to_torch(model)
        weights = prunable_weights(module)
        masks: dict = {}

        def apply_masks(target_sparsity: float) -> None:
            masks.clear()
            masks.update(magnitude_masks(weights, target_sparsity, self.scope))
            keep_zero(module)

        def keep_zero(_module) -> None:
            with torch.no_grad():
                for name, w in weights.items():
                    w.mul_(masks[name])

        config = fine_tune_config(self.epochs, self.lr, **ctx.options.get("fine_tune", {}))
        callbacks = Callbacks(after_step=keep_zero)
        if self.schedule == "gradual":
            ramp = ramp_epochs(self.epochs)
            callbacks.before_epoch = lambda _m, epoch: apply_masks(cubic_sparsity(float(self.sparsity), epoch, ramp))
            callbacks.first_eligible_epoch = ramp - 1  # only epochs at the target sparsity may be kept as best
            apply_masks(cubic_sparsity(float(self.sparsity), 0, ramp))
        else:
            apply_masks(float(self.sparsity))
        report = recover(module, model, ctx, config, callbacks=callbacks)
        apply_masks(float(self.sparsity))  # a no-op unless training was skipped before the target was reached
        new = export(module, model, self.record(), seed=ctx.seed)
        total = sum(int(w.numel()) for w in weights.values())
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        storage = model_storage(onnx_weights(new.proto()))
        return PassResult(new, {
            "sparsity": zeros / max(1, total),
            "layer_sparsity": {name: float((w == 0).float().mean()) for name, w in weights.items()},
            "dense_bytes": storage["total"]["dense_fp32"], "sparse_bytes": storage["total"]["sparse"],
            "note": DENSE_RUNTIME_NOTE, "fine_tune": report.to_dict(),
        })
