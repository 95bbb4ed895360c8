"""Structured channel pruning with real speedup: whole channels are removed, so the exported model
is physically smaller (fewer output channels per Conv/Gemm) and dense runtimes run it faster.

Dependencies between layers (residual adds, depthwise groups, flatten into a dense layer) are
resolved by Torch-Pruning's DepGraph rather than by hand-written graph surgery. The classifier
layer (the last Linear) keeps its outputs. Recovery, in order:

1. least-squares refit of every Linear, dense Conv2d (on its input patches) and depthwise Conv2d
   (per channel) to the unpruned model's outputs on the kept channels, given the pruned network's
   inputs (closed form), on calibration rows plus teacher-guided synthetic rows of every class
   (:func:`edgeopt.training.synthesize_for_classes`), so the fit does not favour the classes the
   tuning rows happen to hold;
2. distillation fine-tuning (KL to the original's outputs) plus feature hints on the kept channels,
   with the classifier frozen, on the tuning rows plus ``synthetic`` times as many synthetic rows,
   keeping the refit weights if no epoch beats them. Tuning data often covers only some classes;
   distilling on it alone, the student forgets the others (DS-CNN, tuning rows holding 8 of 12
   words, 31% fewer MACs: 4.4 pt drop; synthetic rows in fine-tuning only: 2.45 pt; see
   benchmarks/prune_dscnn.py for the current figure). With synthetic rows every row is labelled by
   the teacher only and early stopping follows agreement with the teacher.

Channel counts are rounded to multiples of ``round_to`` (default 8): ONNX Runtime's blocked (NCHWc)
convolution kernels need them, and a model with odd channel counts ran ~6x *slower* than the
unpruned one in our DS-CNN measurement, despite fewer MACs.
"""

from __future__ import annotations

from typing import ClassVar

from ..errors import ConfigError, PassError
from ..training import AUGMENTATIONS, Callbacks, augment_batch, fine_tune_config, recover, synthesize_for_classes
from .base import Choice, FloatRange, IntRange, Pass, PassContext, PassResult

IMPORTANCES = ("l1", "l2", "taylor")
SCOPES = ("global", "layer")


def macs_and_params(module, example) -> tuple[int, int]:
    """Multiply-accumulates and parameter count of a torch module for one example batch (Torch-Pruning's counter)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def kept_channels(original, pruned) -> dict[str, list[int]]:
    """For every biased Conv/Linear of ``pruned``, which of ``original``'s output channels it kept.

    Pruning slices tensors without changing values, so each surviving bias entry is found at its
    original position (Torch-Pruning records only each group's root indices).
    """
    before = dict(original.named_modules())
    out = {}
    for name, m in pruned.named_modules():
        ref = before.get(name)
        if getattr(m, "bias", None) is None or getattr(ref, "bias", None) is None or m.bias.ndim != 1:
            continue
        old, new = ref.bias.detach().numpy(), m.bias.detach().numpy()
        position = {float(v): i for i, v in enumerate(old)}
        if len(position) != len(old) or any(float(v) not in position for v in new):
            continue  # repeated bias values: the mapping would be ambiguous, so this layer gets no hint
        out[name] = [position[float(v)] for v in new]
    return out


def rounded_kept(channels: int, n_pruned: int, round_to: int) -> int:
    """Channels a layer keeps: ``channels - n_pruned`` rounded to the *nearest* multiple of ``round_to``
    (at least one multiple), never more than it has."""
    kept = channels - n_pruned
    return min(channels, max(round_to, int(kept / round_to + 0.5) * round_to))


def _nearest_rounding_pruner():
    """Torch-Pruning's MetaPruner with kept channel counts rounded to the nearest multiple of ``round_to``.

    Torch-Pruning rounds the kept count *down*: at ``round_to=8`` any ratio > 0 halves a 16-channel
    layer (ResNet-8's first stage: ratio 0.05 removed 53% of the MACs and lost 48 pt before
    recovery). Rounding to the nearest multiple keeps the requested ratio's meaning: a layer is cut
    by one multiple only when the ratio asks for at least half of one.
    """
    import torch_pruning as tp

    class NearestRoundingPruner(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            return current_channels - rounded_kept(current_channels, n_pruned, round_to)

    return NearestRoundingPruner


class FeatureHints:
    """Feature distillation on kept channels (FitNets-style hints for every pruned layer).

    The pruned student's layer outputs are pulled toward the unpruned teacher's outputs on the same
    channels, normalised by the teacher's variance. Matching internal features constrains the
    student far more than matching the final outputs on the (possibly class-skewed) tuning data.
    """

    def __init__(self, student, teacher, kept: dict[str, list[int]], weight: float):
        import torch

        self.teacher, self.kept, self.weight = teacher.eval(), kept, weight
        self.student_out: dict = {}
        self.teacher_out: dict = {}
        self.handles = [m.register_forward_hook(self._keep(self.student_out, name))
                        for name, m in student.named_modules() if name in kept]
        self.handles += [m.register_forward_hook(self._keep(self.teacher_out, name))
                         for name, m in teacher.named_modules() if name in kept]
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.index = {k: torch.tensor(v, dtype=torch.long) for k, v in kept.items()}

    @staticmethod
    def _keep(store, name):
        def hook(_module, _inputs, output):
            store[name] = output
        return hook

    def close(self) -> None:
        """Remove the hooks (the student is exported and kept as a twin afterwards)."""
        for handle in self.handles:
            handle.remove()
        self.student_out.clear()
        self.teacher_out.clear()

    def __call__(self, inputs):
        import torch

        with torch.no_grad():
            self.teacher(inputs)
        losses = []
        for name, index in self.index.items():
            s, t = self.student_out.get(name), self.teacher_out.get(name)
            if s is None or t is None:
                continue
            t = t.index_select(1, index)
            losses.append(torch.mean((s - t) ** 2) / (t.var() + 1e-8))
        return self.weight * torch.stack(losses).mean() if losses else torch.zeros(())


def _is_refittable(m) -> bool:
    """A Linear or a dense (groups 1) zero-padded Conv2d: its output is linear in its input patches."""
    from torch import nn

    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and (m.groups == 1 or _is_depthwise(m)) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def _is_depthwise(m) -> bool:
    """A Conv2d with one filter per input channel (channel multiplier 1)."""
    return getattr(m, "groups", 1) > 1 and m.groups == m.in_channels == m.out_channels


def _capture(module, names, x, *, inputs: bool):
    """Inputs (or outputs) of the named submodules when ``module`` runs on ``x``."""
    import torch

    store, handles = {}, []
    for name, m in module.named_modules():
        if name in names:
            if inputs:
                handles.append(m.register_forward_pre_hook(lambda _m, args, name=name: store.__setitem__(name, args[0].detach())))
            else:
                handles.append(m.register_forward_hook(lambda _m, _a, out, name=name: store.__setitem__(name, out.detach())))
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return store


def _rows(t):
    """(samples, channels) view of an NCHW feature map (or a 2-D batch)."""
    if t.ndim == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t.reshape(-1, t.shape[-1])


def _patches(m, x, out, max_rows: int, rng):
    """(input patches, outputs) of layer ``m`` at up to ``max_rows`` sampled output positions.

    A Conv2d's output at one position is ``weight.reshape(out, -1) @ patch + bias``, with the patch
    laid out (channels, kh, kw) as ``torch.nn.functional.unfold`` gives it; a Linear's patch is its input row.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    if x.ndim != 4:
        features, target = _rows(x), _rows(out)
    else:
        # unfold image by image, keeping a random subset of positions: all patches at once would
        # need rows x (channels * kh * kw) doubles (0.6 GB for 500 CIFAR images in the first stage).
        per_image = max(1, -(-max_rows // len(x)))
        feats, targs = [], []
        for i in range(len(x)):
            cols = F.unfold(x[i:i + 1], m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)[0].T
            o = out[i].reshape(out.shape[1], -1).T
            if len(cols) != len(o):
                return None, None
            pick = torch.from_numpy(np.sort(rng.choice(len(o), min(per_image, len(o)), replace=False)))
            feats.append(cols[pick])
            targs.append(o[pick])
        features, target = torch.cat(feats), torch.cat(targs)
    if len(features) > max_rows:
        pick = torch.from_numpy(np.sort(rng.choice(len(features), max_rows, replace=False)))
        features, target = features[pick], target[pick]
    return features.double(), target.double()


def reconstruct(student, teacher, kept: dict[str, list[int]], x, *, max_rows: int = 50000, ridge: float = 1e-4,
                seed: int = 0, teacher_names: dict[str, str] | None = None) -> list[str]:
    """Least-squares reconstruction of pruned convolutions and linears (He et al. 2017; ThiNet).

    Layer by layer in forward order, each dense layer's weights and bias (Linear, or Conv2d of any
    kernel size with groups 1, fit on its input patches) are refit so that, given the pruned
    network's actual inputs, it reproduces the unpruned teacher's outputs on the channels it kept.
    A closed-form linear fit on features: no gradient steps on the (possibly class-skewed) tuning
    data. Refitting the k x k convolutions matters: a layer whose *inputs* lost channels is where
    the error appears (ResNet-8, 8 of the 64 block-internal channels removed: 1x1 and classifier
    refit only, -3.6 pt; with the 3x3 conv after them refit, see the tests). ``teacher_names`` maps a
    student layer to the teacher layer whose output it must reproduce when the names differ (the
    second factor of a low-rank pair stands for the original layer). Returns the refit layer names.
    """
    import numpy as np
    import torch

    teacher_names = teacher_names or {}
    names = [n for n, m in student.named_modules() if n in kept and _is_refittable(m)]
    targets = _capture(teacher, {teacher_names.get(n, n) for n in names}, x, inputs=False)
    targets = {n: targets[teacher_names.get(n, n)] for n in names if teacher_names.get(n, n) in targets}
    rng = np.random.default_rng(seed)
    modules = dict(student.named_modules())
    done = []
    for name in names:
        m = modules[name]
        if m.bias is None:
            continue
        got = _capture(student, {name}, x, inputs=True).get(name)
        if got is None or name not in targets:
            continue
        features, target = _patches(m, got, targets[name].index_select(1, torch.tensor(kept[name])), max_rows, rng)
        if features is None:
            continue
        if _is_depthwise(m):
            # One small fit per channel: its output reads only its own input patch.
            if features.shape[1] != m.weight.numel():
                continue
            _refit_depthwise(m, features, target, ridge)
            done.append(name)
            continue
        if features.shape[1] != m.weight[0].numel():
            continue
        design = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], 1)
        gram = design.T @ design
        # Ridge relative to each feature's own scale, bias column unregularised: one ridge from the
        # mean diagonal shrank the first conv's bias (0..255 pixel features dwarf the constant column)
        # and a refit of an unpruned ResNet-8 lost 1.6 pt.
        shrink = ridge * torch.diag(gram).clone()
        shrink[-1] = 0
        gram += torch.diag(shrink + 1e-12)
        solution = torch.linalg.solve(gram, design.T @ target)  # (in * kh * kw + 1) x out
        with torch.no_grad():
            m.weight.copy_(solution[:-1].T.reshape(m.weight.shape).float())
            m.bias.copy_(solution[-1].float())
        done.append(name)
    return done


def _refit_depthwise(m, features, target, ridge: float) -> None:
    """Per-channel least squares for a depthwise conv: ``features`` (rows, channels * kh * kw) laid
    out channel-major as unfold gives it, ``target`` (rows, channels)."""
    import torch

    channels = m.out_channels
    patch = features.reshape(len(features), channels, -1)
    design = torch.cat([patch, torch.ones(len(features), channels, 1, dtype=patch.dtype)], 2)  # n, c, k + 1
    gram = torch.einsum("nci,ncj->cij", design, design)
    shrink = ridge * torch.diagonal(gram, dim1=1, dim2=2).clone()
    shrink[:, -1] = 0
    gram = gram + torch.diag_embed(shrink + 1e-12)
    solution = torch.linalg.solve(gram, torch.einsum("nci,nc->ci", design, target)[..., None])[..., 0]  # c, k + 1
    with torch.no_grad():
        m.weight.copy_(solution[:, :-1].reshape(m.weight.shape).float())
        m.bias.copy_(solution[:, -1].float())


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
                 epochs: int = 3, lr: float = 5e-4, round_to: int = 8, feature_weight: float = 1.0,
                 reconstruct: bool = True, calibration_samples: int = 512, train_classifier: bool = False,
                 steps: int = 1, augment: str = "auto", synthetic: float = 1.0):
        self.ratio = ratio
        self.importance = importance
        self.scope = scope
        self.epochs = epochs
        self.lr = lr
        self.round_to = round_to
        self.feature_weight = feature_weight
        self.reconstruct = reconstruct
        self.calibration_samples = calibration_samples
        self.train_classifier = train_classifier
        self.steps = steps
        self.augment = augment
        self.synthetic = synthetic

    @classmethod
    def search_space(cls):
        # The search works at accuracy budgets of about 1 pt: on DS-CNN/KWS with 2000 tuning rows,
        # ratios 0.38-0.41 lost 30-40 pt and 0.15 still lost ~2.4 pt, so larger ratios only waste
        # trials. 0 epochs (reconstruction only, on synthetic rows too) is a cheap candidate of its own:
        # DS-CNN with 25% fewer MACs lost 1.15 pt on rows of unseen words with no training at all.
        return {"ratio": FloatRange(0.05, 0.3), "importance": Choice(IMPORTANCES), "scope": Choice(SCOPES),
                "epochs": IntRange(0, 4)}

    @classmethod
    def mild_settings(cls):
        # Ratios 0.07-0.13 with 3-4 epochs were the DS-CNN/KWS front points that beat int8 alone on
        # latency, size and drop in the searches of docs/search.md (kws4, kws6, kws7).
        return [{"ratio": 0.07, "importance": "l2", "scope": "global", "epochs": 4},
                {"ratio": 0.09, "importance": "l1", "scope": "global", "epochs": 4},
                {"ratio": 0.12, "importance": "l2", "scope": "global", "epochs": 3}]

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.ratio, (int, float)) or not 0 < self.ratio < 1:
            raise ConfigError(f"{self.name}: parameter 'ratio' must be a fraction in (0, 1); got {self.ratio!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"{self.name}: parameter 'epochs' must be an int >= 0; got {self.epochs!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"{self.name}: parameter 'round_to' must be an int >= 1; got {self.round_to!r}")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 20:
            raise ConfigError(f"{self.name}: parameter 'steps' must be an int in [1, 20]; got {self.steps!r}")
        if not isinstance(self.train_classifier, bool):
            raise ConfigError(f"{self.name}: parameter 'train_classifier' must be true or false; got {self.train_classifier!r}")
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"{self.name}: parameter 'reconstruct' must be true or false; got {self.reconstruct!r}")
        if not isinstance(self.calibration_samples, int) or self.calibration_samples < 1:
            raise ConfigError(f"{self.name}: parameter 'calibration_samples' must be an int >= 1; got {self.calibration_samples!r}")
        if not isinstance(self.feature_weight, (int, float)) or self.feature_weight < 0:
            raise ConfigError(f"{self.name}: parameter 'feature_weight' must be a number >= 0; got {self.feature_weight!r}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"{self.name}: parameter 'augment' must be one of {list(AUGMENTATIONS)}; got {self.augment!r}")
        if not isinstance(self.synthetic, (int, float)) or not 0 <= self.synthetic <= 10:
            raise ConfigError(f"{self.name}: parameter 'synthetic' (synthetic rows per tuning row) must be in [0, 10]; got {self.synthetic!r}")
        fine_tune_config(self.epochs, self.lr).validate()

    def _importance(self):
        import torch_pruning as tp

        if self.importance == "l1":
            return tp.importance.MagnitudeImportance(p=1)
        if self.importance == "l2":
            return tp.importance.MagnitudeImportance(p=2)
        return tp.importance.TaylorImportance()

    def _pruner(self, module, example, ignored, importance, *, steps: int):
        """Torch-Pruning's MetaPruner with this pass's ratio, scope and rounding."""
        return _nearest_rounding_pruner()(
            module, example, importance=importance, pruning_ratio=float(self.ratio),
            global_pruning=self.scope == "global", max_pruning_ratio=0.9, ignored_layers=ignored,
            round_to=self.round_to if self.round_to > 1 else None, iterative_steps=steps)

    def _check_removes_channels(self, module, example, ignored) -> None:
        """Refuse, before any synthesis or training, a ratio too small to remove one rounded block of
        channels: the result would be the input model, re-trained at full cost (a search trial wasted).

        A dry run with magnitude importance on a copy: it decides how many channels each layer loses
        exactly for ``scope="layer"``; for global scope the allocation may differ, but a ratio that
        removes nothing under one importance is at the rounding threshold under any.
        """
        import copy

        import torch_pruning as tp

        dry = copy.deepcopy(module)
        before = conv_channels(dry)
        ignored_dry = [dict(dry.named_modules())[n] for n, m in module.named_modules() if any(m is i for i in ignored)]
        self._pruner(dry, example, ignored_dry, tp.importance.MagnitudeImportance(p=2), steps=1).step()
        if conv_channels(dry) == before:
            raise PassError(f"{self.name}: ratio {self.ratio:g} removes no channel once channel counts are rounded "
                            f"to multiples of {self.round_to}; use a larger ratio or a smaller round_to")

    def run(self, model, ctx: PassContext) -> PassResult:
        import copy

        import numpy as np
        import torch
        from torch import nn

        from ..torch_twin import example_input, export, to_torch
        from ..training import log_probabilities, training_data

        module = to_torch(model)
        example = example_input(model, batch=1, seed=ctx.seed)
        macs_before, params_before = macs_and_params(module, example)
        channels_before = conv_channels(module)
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        ignored = linears[-1:]  # the classifier's outputs are the task's classes
        self._check_removes_channels(module, example, ignored)
        needs_teacher = self.reconstruct or (self.epochs > 0 and (self.feature_weight > 0 or self.synthetic > 0))
        # the unpruned twin, copied rather than converted and verified a second time
        teacher = copy.deepcopy(module) if needs_teacher else None
        pruner = self._pruner(module, example, ignored, self._importance(), steps=self.steps)
        kept = {n: list(range(c)) for n, c in channels_before.items()}
        train = training_data(model, ctx)[0] if (self.reconstruct or self.importance == "taylor"
                                                  or (self.synthetic > 0 and self.epochs > 0)) else None
        synthetic = None
        if self.synthetic > 0 and (self.reconstruct or self.epochs > 0):
            # Balanced over the classes even when the tuning rows are not: used for the importance
            # scores, the refit and the fine-tuning, so none of them favours the tuning rows' classes.
            pool = np.asarray(train.x, dtype=np.float32)
            count = int(round(self.synthetic * len(pool)))
            if self.epochs == 0:
                count = min(count, self.calibration_samples)  # only the importance scores and the refit read them
            synthetic = synthesize_for_classes(teacher, pool, count, np.random.default_rng(ctx.seed + 2))
        x_calib = None
        if self.reconstruct or self.importance == "taylor":
            rows = np.sort(np.random.default_rng(ctx.seed).permutation(len(train))[: self.calibration_samples])
            x_rows = np.ascontiguousarray(train.x[rows], dtype=np.float32)
            y_calib = torch.from_numpy(train.y[rows].astype("int64")) if train.has_labels else None
            if synthetic is not None and len(synthetic):
                # Synthetic rows have no true label: importance then follows the teacher's outputs.
                extra = synthetic[np.sort(np.random.default_rng(ctx.seed + 3).permutation(len(synthetic))[: self.calibration_samples])]
                x_rows, y_calib = np.concatenate([x_rows, extra]), None
            x_calib = torch.from_numpy(x_rows)
            x_refit = x_calib
            if self.augment == "teacher_mix":
                # The refit matches the teacher's features: on augmented rows too, so that it fits the
                # inputs of classes missing from the tuning data rather than only the tuning classes.
                extra = augment_batch(x_rows, "teacher_mix", np.random.default_rng(ctx.seed), noise_scale=0.0,
                                      pool=np.asarray(train.x, dtype=np.float32))
                x_refit = torch.from_numpy(np.concatenate([x_rows, extra]))
        refit: list[str] = []
        for _ in range(self.steps):
            if self.importance == "taylor":
                # Taylor importance reads gradients: the task loss (or distance to the teacher's outputs).
                out = module(x_calib)
                if y_calib is not None:
                    loss = torch.nn.functional.nll_loss(log_probabilities(out), y_calib)
                else:
                    target = torch.from_numpy(model.predict(x_calib.numpy())[0])
                    loss = torch.nn.functional.mse_loss(out, target)
                module.zero_grad()
                loss.backward()
            before = copy.deepcopy(module) if teacher is not None else None
            pruner.step()
            module.zero_grad(set_to_none=True)
            if teacher is None:
                continue
            # Compose this step's surviving channels with the earlier ones (biases change when refit).
            local = kept_channels(before, module)
            kept = {n: [kept[n][i] for i in idx] for n, idx in local.items() if n in kept}
            if self.reconstruct:
                refit = reconstruct(module, teacher, kept, x_refit, seed=ctx.seed)
        macs_after, params_after = macs_and_params(module, example)
        hints = None
        if self.epochs > 0 and self.feature_weight > 0:
            hints = FeatureHints(module, teacher, kept, float(self.feature_weight))
        try:
            # The classifier keeps its outputs; frozen, it cannot learn to ignore classes missing from
            # the tuning data (which is often a skewed sample) while the features recover.
            frozen = set() if self.train_classifier else {id(p) for m in ignored for p in m.parameters()}
            trainable = [p for p in module.parameters() if id(p) not in frozen]
            # keep_start: the refit model is a valid answer; training on a few hundred rows may only worsen it
            config = fine_tune_config(self.epochs, self.lr, **({"augment": self.augment, "keep_start": self.reconstruct}
                                                               | ctx.options.get("fine_tune", {})))
            report = recover(module, model, ctx, config, callbacks=Callbacks(extra_loss=hints), trainable=trainable,
                             extra_inputs=synthetic)
        finally:
            if hints is not None:
                hints.close()
        new = export(module, model, self.record(), seed=ctx.seed)
        channels_after = conv_channels(module)
        return PassResult(new, {
            "macs_before": macs_before, "macs_after": macs_after, "mac_reduction": 1 - macs_after / max(1, macs_before),
            "params_before": params_before, "params_after": params_after,
            "channels_removed": {k: channels_before[k] - channels_after.get(k, 0) for k in channels_before
                                 if channels_before[k] != channels_after.get(k, 0)},
            "reconstructed_layers": len(refit), "fine_tune": report.to_dict(),
        })
