"""Low-rank factorization: truncated SVD of Linear/Gemm weights and of Conv kernels reshaped to
``out x (in * kh * kw)``, then fine-tuning.

A Linear ``out x in`` of rank r becomes Linear(in -> r) then Linear(r -> out); a Conv becomes a
Conv(in -> r, same kernel/stride/padding) then a 1x1 Conv(r -> out). The rank of each layer is the
smallest that keeps ``energy`` of the squared singular values, or, with ``mac_fraction``, the largest
that keeps the factorized layer within that share of the layer's MACs. A layer is factorized only
when that actually saves MACs; depthwise/grouped convolutions are left alone (nothing to share).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import ConfigError, PassError
from ..training import fine_tune_config, recover
from .base import FloatRange, IntRange, Pass, PassContext, PassResult


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest r whose top-r singular values keep ``energy`` of the total squared energy."""
    squared = np.asarray(singular_values, dtype=np.float64) ** 2
    cumulative = np.cumsum(squared) / max(squared.sum(), 1e-30)
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def budget_rank(out_dim: int, in_dim: int, fraction: float) -> int:
    """Largest r with r * (in + out) <= fraction * in * out (MACs of the two factors vs the original)."""
    return max(1, int(fraction * in_dim * out_dim // (in_dim + out_dim)))


def _replace(root, name: str, new) -> None:
    parent = root
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, new)


def factorize(layer, rank: int):
    """An ``nn.Sequential`` of two layers equal to ``layer`` with its weight truncated to ``rank``."""
    import torch
    from torch import nn

    w = layer.weight.detach()
    out_dim = w.shape[0]
    matrix = w.reshape(out_dim, -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = torch.sqrt(s[:rank])
    first_w = (root[:, None] * vh[:rank])           # rank x (in * k)
    second_w = (u[:, :rank] * root[None, :])        # out x rank
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, out_dim, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        conv_type = type(layer)
        first = conv_type(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode)
        second = conv_type(rank, out_dim, 1, bias=bias)
        first.weight.data.copy_(first_w.reshape((rank,) + tuple(w.shape[1:])))
        second.weight.data.copy_(second_w.reshape((out_dim, rank) + (1,) * (w.ndim - 2)))
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second)


class LowRank(Pass):
    """Truncated-SVD factorization of Linear and Conv layers, rank by energy or MAC budget, then fine-tune."""

    name: ClassVar[str] = "lowrank"
    stage: ClassVar[str] = "torch"
    requires: ClassVar[frozenset[str]] = frozenset({"torch"})
    description: ClassVar[str] = "SVD low-rank factorization (Linear; Conv as reshaped kernel) + fine-tuning"

    def __init__(self, *, energy: float = 0.9, mac_fraction: float | None = None, epochs: int = 3, lr: float = 5e-4,
                 reconstruct: bool = True, calibration_samples: int = 512):
        self.energy = energy
        self.mac_fraction = mac_fraction
        self.epochs = epochs
        self.lr = lr
        self.reconstruct = reconstruct
        self.calibration_samples = calibration_samples

    @classmethod
    def search_space(cls):
        # Trained conv nets are close to full rank: ResNet-8 lost 44 pt keeping 95% of the energy, 0.2 pt at
        # 97% (docs/search.md), so lower thresholds only waste trials at the budgets a search works to.
        return {"energy": FloatRange(0.9, 0.999), "epochs": IntRange(0, 10)}

    @classmethod
    def mild_settings(cls):
        # The mildest factorizations that change the network, refit only: in a ResNet-8 search
        # (docs/search.md, ic10; 350 training rows) energies above 0.97 factorized no conv or almost
        # none, 0.948-0.959 with 0-1 epochs cut 1-3% of the estimated latency at -1.2..+0.4 pt, and
        # 0.95 with 4 epochs of fine-tuning lost 15 pt (too few rows to train on).
        return [{"energy": 0.96, "epochs": 0}, {"energy": 0.95, "epochs": 0}]

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.energy, (int, float)) or not 0 < self.energy <= 1:
            raise ConfigError(f"{self.name}: parameter 'energy' must be a fraction in (0, 1]; got {self.energy!r}")
        if self.mac_fraction is not None and (not isinstance(self.mac_fraction, (int, float)) or not 0 < self.mac_fraction < 1):
            raise ConfigError(f"{self.name}: parameter 'mac_fraction' must be None or a fraction in (0, 1); got {self.mac_fraction!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"{self.name}: parameter 'reconstruct' must be true or false; got {self.reconstruct!r}")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ConfigError(f"{self.name}: parameter 'calibration_samples' must be an int >= 1; got {self.calibration_samples!r}")
        fine_tune_config(self.epochs, self.lr).validate()

    def choose_rank(self, layer) -> int | None:
        """The rank for ``layer``, or None when factorizing would not save MACs."""
        import torch

        w = layer.weight.detach()
        out_dim, in_dim = w.shape[0], int(np.prod(w.shape[1:]))
        full = min(out_dim, in_dim)
        if self.mac_fraction is not None:
            rank = budget_rank(out_dim, in_dim, float(self.mac_fraction))
        else:
            s = torch.linalg.svdvals(w.reshape(out_dim, -1)).numpy()
            rank = energy_rank(s, float(self.energy))
        # MACs per output position: original out*in, factorized rank*in + out*rank.
        if rank >= full or rank * (in_dim + out_dim) >= out_dim * in_dim:
            return None
        return rank

    def _refit(self, module, teacher, model, ctx: PassContext, factorized: list[str]) -> list[str]:
        """Data-aware recovery before any training (as in Zhang et al. 2015, "Accelerating very deep
        convolutional networks"): in forward order, every layer's weights are refit by least squares so
        that, on the factorized network's actual inputs, it reproduces the original network's output at
        that point; a factorized pair's second factor reproduces the original layer. Rows: calibration
        rows of the training data (none given: no refit)."""
        import torch

        from ..training import training_data
        from .prune_channels import conv_channels, reconstruct

        if ctx.train is None and ctx.tune is None and ctx.calib is None:
            return []
        train, _ = training_data(model, ctx)
        rows = np.sort(np.random.default_rng(ctx.seed).permutation(len(train))[: self.calibration_samples])
        x = torch.from_numpy(np.ascontiguousarray(train.x[rows], dtype=np.float32))
        channels = conv_channels(module)
        teacher_names = {f"{name}.1": name for name in factorized}
        kept = {name: list(range(count)) for name, count in channels.items()
                if name in teacher_names or not any(name.startswith(f + ".") for f in factorized)}
        return reconstruct(module, teacher, kept, x, seed=ctx.seed, teacher_names=teacher_names)

    def run(self, model, ctx: PassContext) -> PassResult:
        import copy

        from torch import nn

        from ..torch_twin import example_input, export, to_torch
        from .prune_channels import macs_and_params

        module = to_torch(model)
        example = example_input(model, batch=1, seed=ctx.seed)
        macs_before, params_before = macs_and_params(module, example)
        candidates = [(n, m) for n, m in module.named_modules()
                      if isinstance(m, nn.Linear) or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1)]
        ranks = {name: {"rank": rank, "full_rank": int(min(layer.weight.shape[0], np.prod(layer.weight.shape[1:])))}
                 for name, layer in candidates if (rank := self.choose_rank(layer)) is not None}
        if not ranks:
            # Training the unfactorized model would only be fine-tuning under another name: a search
            # would count it as a second technique at the first one's cost (ResNet-8 at energy 0.98).
            setting = f"mac_fraction {self.mac_fraction:g}" if self.mac_fraction is not None else f"energy {self.energy:g}"
            raise PassError(f"{self.name}: {setting} factorizes no layer (at that rank none of the {len(candidates)} "
                            "Conv/Linear layers would save MACs); use a lower energy or a mac_fraction")
        # the unfactorized twin for the refit, copied rather than converted and verified a second time
        teacher = copy.deepcopy(module) if self.reconstruct else None
        layers = dict(candidates)
        for name, r in ranks.items():
            _replace(module, name, factorize(layers[name], r["rank"]))
        if hasattr(module, "recompile"):
            module.recompile()
        macs_after, params_after = macs_and_params(module, example)
        refit = self._refit(module, teacher, model, ctx, list(ranks)) if self.reconstruct else []
        report = recover(module, model, ctx, fine_tune_config(self.epochs, self.lr, **({"keep_start": True} | ctx.options.get("fine_tune", {}))))
        new = export(module, model, self.record(), seed=ctx.seed)
        return PassResult(new, {
            "ranks": ranks, "layers_factorized": len(ranks), "reconstructed_layers": len(refit),
            "macs_before": macs_before, "macs_after": macs_after, "params_before": params_before,
            "params_after": params_after, "fine_tune": report.to_dict(),
        })
