"""Recovery fine-tuning shared by every training pass (pruning, distillation, QAT, low-rank, clustering).

One loop: seeded and deterministic, CPU-friendly defaults (one thread, small batches, few epochs),
cosine or one-cycle learning rate, early stop on a tuning split (the best epoch's weights are kept),
a rich progress bar, knowledge distillation from a teacher (temperature-scaled KL, plus the task
cross-entropy when labels exist, so unlabeled data works too) and light augmentation for small
data sets. Passes plug in through :class:`Callbacks` (re-apply pruning masks after each step,
keep weight clusters, prune gradually per epoch).

>>> cfg = FineTune(epochs=3, lr=1e-3, schedule="cosine")
>>> cfg.validate()
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, DataError

SCHEDULES = ("cosine", "onecycle", "constant")
AUGMENTATIONS = ("auto", "none", "noise", "shift", "time_shift", "teacher_mix")
#: augmentations whose rows no longer carry their original class: labelled by the teacher only
TEACHER_ONLY_AUGMENTATIONS = frozenset({"teacher_mix"})


@dataclass(frozen=True)
class FineTune:
    """Settings of a recovery fine-tuning run (grouped so that passes keep few parameters).

    ``alpha`` weighs distillation against the task loss: ``alpha * KL + (1 - alpha) * CE``
    (with no labels the loss is the distillation term alone). ``patience`` epochs without
    improvement on the tuning split stop the run. AdamW moves every weight by about ``lr`` per step
    whatever its scale, so a tensor of small weights (a first layer fed 0..255 pixels has RMS ~0.005)
    gets its learning rate capped at ``max_relative_step * RMS(tensor)``: a few hundred steps must
    not wipe it out.
    """

    epochs: int = 3
    lr: float = 1e-3
    schedule: str = "cosine"
    batch_size: int = 64
    weight_decay: float = 0.0
    patience: int = 2
    temperature: float = 4.0
    alpha: float = 0.7
    augment: str = "auto"
    threads: int = 1
    holdout: float = 0.1
    max_relative_step: float = 0.01
    progress: bool = True
    #: score the starting weights on the tuning split too, and keep them if no epoch beats them
    #: (passes whose starting model is already a valid answer, e.g. a refit pruned model)
    keep_start: bool = False
    #: decay of an exponential moving average of the weights (0 = off): each epoch is judged, and the
    #: result kept, with the averaged weights, which wander less than the last step's between epochs
    #: (torch.optim.swa_utils). Not combined with an ``after_step`` hook (masks, quantizers): ignored there.
    ema: float = 0.0
    #: train this many times from the same start (seeds seed, seed+1, ...; the same held-out rows)
    #: and keep a greedy soup of the results: their weights averaged, each run added only if the
    #: average's held-out score does not drop (Wortsman et al. 2022, "Model soups"). Fine-tuning
    #: on a few thousand rows is noisy: the same recipe with another seed can land a point apart.
    restarts: int = 1

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"fine-tune epochs must be an int >= 0; got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            raise ConfigError(f"fine-tune lr must be a number in (0, 10); got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"fine-tune schedule must be one of {list(SCHEDULES)}; got {self.schedule!r}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"fine-tune augment must be one of {list(AUGMENTATIONS)}; got {self.augment!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"fine-tune batch_size must be an int >= 1; got {self.batch_size!r}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"fine-tune alpha (distillation weight) must be in [0, 1]; got {self.alpha!r}")
        if not self.temperature > 0:
            raise ConfigError(f"fine-tune temperature must be > 0; got {self.temperature!r}")
        if not self.max_relative_step > 0:
            raise ConfigError(f"fine-tune max_relative_step must be > 0; got {self.max_relative_step!r}")
        if not 0 <= self.holdout < 0.5:
            raise ConfigError(f"fine-tune holdout must be a fraction in [0, 0.5); got {self.holdout!r}")
        if not isinstance(self.restarts, int) or isinstance(self.restarts, bool) or not 1 <= self.restarts <= 64:
            raise ConfigError(f"fine-tune restarts must be an int in 1..64 (1 = one run); got {self.restarts!r}")
        if not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise ConfigError(f"fine-tune ema must be a decay in [0, 1) (0 = off, e.g. 0.995); got {self.ema!r}")


@dataclass
class Callbacks:
    """Hooks a pass gives the loop: after every optimizer step, and before every epoch."""

    after_step: Callable[[Any], None] | None = None
    before_epoch: Callable[[Any, int], None] | None = None
    after_backward: Callable[[Any], None] | None = None
    #: extra_loss(inputs) -> tensor added to the loss, called after the student's forward on ``inputs``
    extra_loss: Callable[[Any], Any] | None = None
    #: epochs before this one are never kept as "best" (e.g. a gradual schedule has not reached its target)
    first_eligible_epoch: int = 0


@dataclass
class FineTuneReport:
    epochs_run: int = 0
    best_epoch: int = -1
    best_score: float | None = None
    score_name: str = ""
    history: list = field(default_factory=list)
    #: the starting weights' score (``FineTune.keep_start``); ``best_epoch`` -1 means they were kept
    start_score: float | None = None
    #: ``FineTune.restarts`` > 1: each run's report and which runs the soup averaged
    runs: list = field(default_factory=list)
    soup: list = field(default_factory=list)
    #: the held-out rows, their labels and teacher outputs (for the soup; not reported)
    holdout: tuple | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "score": self.score_name, "history": self.history,
                "start_score": self.start_score,
                **({"runs": self.runs, "soup": self.soup} if self.runs else {})}


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------

def log_probabilities(outputs):
    """Log-probabilities from a classifier's outputs, whether they are logits or softmax probabilities.

    The MLPerf Tiny models end in Softmax; ``log(p)`` equals the logits up to a per-row constant,
    so temperature scaling on it is exact.
    """
    import torch

    with torch.no_grad():
        looks_like_probabilities = bool(
            outputs.min() >= 0 and outputs.max() <= 1 and torch.allclose(outputs.sum(-1), torch.ones(1), atol=1e-3))
    if looks_like_probabilities:
        return torch.log(outputs.clamp_min(1e-12))
    return torch.log_softmax(outputs, dim=-1)


def distillation_loss(student, teacher, labels=None, *, temperature: float = 4.0, alpha: float = 0.7):
    """Hinton et al.: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    Without labels the loss is the KL term alone. Outputs that are not class scores (2-D with
    several classes) are distilled by mean squared error instead.
    """
    import torch
    import torch.nn.functional as F

    if student.ndim != 2 or student.shape[-1] < 2:
        return F.mse_loss(student, teacher)
    s_log = log_probabilities(student)
    t_log = log_probabilities(teacher).detach()
    kd = F.kl_div(torch.log_softmax(s_log / temperature, -1), torch.log_softmax(t_log / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature ** 2
    if labels is None or alpha >= 1:
        return kd
    ce = F.nll_loss(s_log, labels)
    return alpha * kd + (1 - alpha) * ce


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------

def _resolve_augment(kind: str, x: np.ndarray) -> str:
    if kind != "auto":
        return kind
    if x.ndim == 4:
        spatial = x.shape[1:3] if x.shape[-1] <= 4 else x.shape[2:4]
        # Images (both spatial sides >= 16) shift in 2-D; MFCC-like inputs (time x coefficients) only in time.
        return "shift" if min(spatial) >= 16 else "time_shift"
    return "noise"


def _time_axis(x: np.ndarray) -> tuple[int, int]:
    """(time axis, coefficient axis) of a batch of (time x coefficients) maps, NHWC or NCHW."""
    return (1, 2) if x.ndim == 4 and x.shape[-1] <= 4 else (2, 3)


def teacher_mix(x: np.ndarray, rng: np.random.Generator, *, noise_scale: float, pool: np.ndarray | None = None) -> np.ndarray:
    """Move a batch of (time x coefficients) inputs away from the classes it was drawn from.

    Tuning data often covers only some of the classes (a file sorted by class, a user who recorded a
    few words). Fine-tuning on it alone makes the student forget the rest, even when distilling:
    the teacher is only ever asked about the tuning classes. These rows are labelled by the teacher
    alone (no hard labels), so they may leave every class: per row, one of

    - mixup with another row (random weight): inputs between words;
    - a stationary input: one random frame repeated over time plus small noise, at a random gain.
      Silence and background noise look like this, and no word in the tuning data does;
    - the row itself with SpecAugment time/frequency masks, a random gain (offset of coefficient 0,
      the log energy, which is what a volume change does to MFCCs) and a time shift.

    ``pool`` (default: the batch) is where mixup partners and stationary frames come from.
    """
    if x.ndim != 4:
        return x + rng.standard_normal(x.shape).astype(x.dtype) * np.asarray(noise_scale, dtype=x.dtype)
    pool = x if pool is None else pool
    t_axis, c_axis = _time_axis(x)
    # Work on (rows, time, coefficients, rest) so NHWC and NCHW share one code path.
    order = (0, t_axis, c_axis) + tuple(a for a in range(1, 4) if a not in (t_axis, c_axis))
    inverse = np.argsort(order)
    out = np.ascontiguousarray(x.transpose(order)).copy()
    src = np.ascontiguousarray(pool.transpose(order))
    n, steps, coefs = out.shape[:3]
    energy_scale = float(src[:, :, 0].std()) or 1.0
    coef_scale = src.std(axis=(0, 1), keepdims=True)[0]  # (coefficients, rest)
    choice = rng.random(n)
    for i in range(n):
        if choice[i] < 0.3:
            lam = rng.uniform(0.2, 0.8)
            out[i] = lam * out[i] + (1 - lam) * src[rng.integers(len(src))]
        elif choice[i] < 0.5:
            frame = src[rng.integers(len(src)), rng.integers(steps)]
            out[i] = frame[None] + rng.standard_normal((steps,) + frame.shape).astype(out.dtype) * 0.1 * coef_scale
        else:
            width = int(rng.integers(0, max(2, steps // 5)))
            start = int(rng.integers(0, steps - width + 1))
            out[i, start:start + width] = out[i].mean(axis=0, keepdims=True)
            width = int(rng.integers(0, max(2, coefs // 4)))
            start = int(rng.integers(1, max(2, coefs - width + 1)))  # coefficient 0 (energy) is the gain's
            out[i, :, start:start + width] = 0
            shift = int(rng.integers(-(steps // 8), steps // 8 + 1))
            if shift:
                out[i] = np.roll(out[i], shift, axis=0)
        out[i, :, 0] += rng.normal(0, 0.3) * energy_scale
    out = out.transpose(inverse)
    return np.ascontiguousarray(out + rng.standard_normal(out.shape).astype(out.dtype) * np.asarray(noise_scale, dtype=out.dtype))


def synthesize_for_classes(teacher, x: np.ndarray, count: int, rng: np.random.Generator, *, steps: int = 30,
                           step_scale: float = 0.05, confidence: float = 0.6, batch_size: int = 256,
                           balance: bool = True) -> np.ndarray:
    """Inputs the teacher assigns to every class, grown from the given (possibly class-skewed) rows.

    Distillation only teaches the student what the teacher does on the inputs it is shown. When the
    tuning data holds a few of the classes, the student never sees the teacher's behaviour near the
    others and forgets them. Each synthetic row starts from a :func:`teacher_mix`-augmented row and
    takes signed-gradient steps (``step_scale`` times each feature's standard deviation, at most
    ``steps``) up the teacher's log-probability of a target class until the teacher gives it
    ``confidence``. With ``balance`` (the default) the targets fill the classes the given rows lack:
    each class gets a share of ``count`` in proportion to how far the teacher's predictions on ``x``
    fall short of an even split of ``len(x) + count`` rows, so rows plus synthetic rows cover the
    classes about evenly (DS-CNN recovered on 8 of 12 words, 31% fewer MACs, seed 1: 1.65 pt drop on
    the other words with uniform targets, 0.90 pt balanced; benchmarks/prune_dscnn.py). Without it,
    targets are uniform over all classes. A data-free-distillation idea (DeepInversion, Yin et al.
    2020) in its cheapest form: the rows stay near real inputs instead of being generated from noise.
    Returns ``count`` rows for teacher-only distillation (no hard labels).
    """
    import torch

    if count <= 0:
        return x[:0]
    teacher = teacher.eval()
    start = teacher_mix(x[rng.integers(0, len(x), count)], rng, noise_scale=0.0, pool=x)
    scale = torch.from_numpy(np.ascontiguousarray(x.std(axis=0, keepdims=True) * step_scale, dtype=np.float32))
    with torch.no_grad():
        classes = teacher(torch.from_numpy(np.ascontiguousarray(start[:2]))).shape[-1]
    targets = rng.integers(0, classes, count)
    if balance:
        with torch.no_grad():
            predicted = np.concatenate([
                log_probabilities(teacher(torch.from_numpy(np.ascontiguousarray(x[b:b + batch_size], dtype=np.float32))))
                .argmax(1).numpy() for b in range(0, len(x), batch_size)])
        shortfall = np.maximum((len(x) + count) / classes - np.bincount(predicted, minlength=classes), 0.0)
        if shortfall.sum() > 0:  # (otherwise every class already has its even share: uniform targets)
            targets = rng.choice(classes, count, p=shortfall / shortfall.sum())
    out = []
    for begin in range(0, count, batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(start[begin:begin + batch_size]))
        tb = torch.from_numpy(targets[begin:begin + batch_size])
        for _ in range(steps):
            xb.requires_grad_(True)
            logp = log_probabilities(teacher(xb)).gather(1, tb[:, None])[:, 0]
            (grad,) = torch.autograd.grad(logp.sum(), xb)
            active = (logp.detach().exp() < confidence).float().reshape(-1, *([1] * (xb.ndim - 1)))
            if not bool(active.any()):
                break
            xb = (xb.detach() + active * scale * grad.sign()).detach()
        out.append(xb.detach().numpy())
    return np.concatenate(out).astype(x.dtype, copy=False)


def augment_batch(x: np.ndarray, kind: str, rng: np.random.Generator, *, noise_scale: float,
                  pool: np.ndarray | None = None) -> np.ndarray:
    """Augmentation for small data: noise, spatial shifts (images), time shifts (MFCC), or
    :func:`teacher_mix` (rows that leave their class, for teacher-only distillation)."""
    if kind == "none":
        return x
    if kind == "teacher_mix":
        return teacher_mix(x, rng, noise_scale=noise_scale, pool=pool)
    out = x.copy()
    if kind in ("shift", "time_shift") and x.ndim == 4:
        nhwc = x.shape[-1] <= 4
        axes = (1, 2) if nhwc else (2, 3)
        if kind == "time_shift":
            axes = axes[:1]
        for i in range(len(out)):
            for axis in axes:
                limit = max(1, out.shape[axis] // 8)
                shift = int(rng.integers(-limit, limit + 1))
                if shift:
                    rolled = np.roll(out[i], shift, axis=axis - 1)
                    index = [slice(None)] * rolled.ndim
                    index[axis - 1] = slice(0, shift) if shift > 0 else slice(shift, None)
                    rolled[tuple(index)] = 0 if kind == "shift" else rolled[tuple(index)].mean()
                    out[i] = rolled
    out = out + rng.standard_normal(out.shape).astype(out.dtype) * np.asarray(noise_scale, dtype=out.dtype)
    return out


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------

def predict(module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of a torch module over numpy inputs, in eval mode, batched."""
    import torch

    was_training = module.training
    module.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))).numpy())
    module.train(was_training)
    return np.concatenate(outs, axis=0)


def _teacher_fn(teacher) -> Callable[[np.ndarray], np.ndarray] | None:
    if teacher is None:
        return None
    if hasattr(teacher, "predict") and hasattr(teacher, "onnx_bytes"):  # a ModelHandle: run on ONNX Runtime
        return lambda x: teacher.predict(x, batch_size=len(x))[0]
    if callable(teacher) and hasattr(teacher, "parameters"):
        frozen = copy.deepcopy(teacher).eval()
        return lambda x: predict(frozen, x)
    if callable(teacher):
        return teacher
    raise ConfigError(f"teacher must be a ModelHandle, an nn.Module or a callable; got {type(teacher).__name__}")


def _score(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> tuple[str, float]:
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        if labels is not None:
            return "top1", float(np.mean(outputs.argmax(1) == labels))
        if reference is not None:
            return "agreement", float(np.mean(outputs.argmax(1) == reference.argmax(1)))
    if reference is not None:
        return "neg_mse", -float(np.mean((outputs - reference) ** 2))
    raise DataError("early stopping needs labels or a teacher to compare with; give labelled tuning data or a teacher")


def fine_tune(module, train, *, tune=None, teacher=None, config: FineTune = FineTune(), seed: int = 0,
              callbacks: Callbacks | None = None, trainable=None, report: Callable[[str, float], None] | None = None,
              extra_inputs: np.ndarray | None = None, _restart: int | None = None) -> FineTuneReport:
    """Fine-tune ``module`` in place on ``train`` (an :class:`edgeopt.data.Dataset`), distilling from ``teacher``.

    ``tune`` is the early-stopping split; without one, a seeded random ``config.holdout`` share of
    ``train`` is held out (random, not the last rows: data sets are often sorted by class). The
    weights of the best epoch on that split are restored at the end. Deterministic for a given
    seed and thread count.

    >>> import torch, numpy as np                                            # doctest: +SKIP
    >>> from edgeopt.data import Dataset                                     # doctest: +SKIP
    >>> net = torch.nn.Linear(4, 3)                                          # doctest: +SKIP
    >>> d = Dataset(np.random.rand(64, 4).astype("float32"), np.arange(64) % 3)  # doctest: +SKIP
    >>> fine_tune(net, d, config=FineTune(epochs=1, progress=False)).epochs_run  # doctest: +SKIP
    1
    """
    import torch

    config.validate()
    if config.restarts > 1 and not (callbacks and callbacks.after_step):  # (masks, quantizers: one run)
        return _greedy_soup(module, train, tune=tune, teacher=teacher, config=config, seed=seed, callbacks=callbacks,
                            trainable=trainable, report=report, extra_inputs=extra_inputs)
    callbacks = callbacks or Callbacks()
    teacher_of = _teacher_fn(teacher)
    if train is None or len(train) == 0:
        raise DataError("fine-tuning needs training data (PassContext.train or .tune); none was given")
    if not train.has_labels and teacher_of is None:
        raise DataError("fine-tuning unlabeled data needs a teacher to distill from")
    rng = np.random.default_rng(seed)
    x_all = np.asarray(train.x, dtype=np.float32)
    y_all = None if train.y is None else np.asarray(train.y).astype(np.int64).reshape(-1)
    if tune is None and config.holdout > 0 and len(x_all) >= 20:
        order = rng.permutation(len(x_all))
        cut = max(1, int(round(len(x_all) * config.holdout)))
        hold, keep = np.sort(order[:cut]), np.sort(order[cut:])
        x_tune, y_tune = x_all[hold], None if y_all is None else y_all[hold]
        x_all, y_all = x_all[keep], None if y_all is None else y_all[keep]
    elif tune is not None:
        x_tune = np.asarray(tune.x, dtype=np.float32)
        y_tune = None if tune.y is None else np.asarray(tune.y).astype(np.int64).reshape(-1)
    else:
        x_tune, y_tune = None, None
    kind = _resolve_augment(config.augment, x_all)
    if kind in TEACHER_ONLY_AUGMENTATIONS and teacher_of is None:
        kind = _resolve_augment("auto", x_all)
    if kind in TEACHER_ONLY_AUGMENTATIONS and x_tune is not None:
        # Early stopping on agreement with the teacher, on the held-out rows and a fixed augmented copy
        # of them: accuracy on the tuning classes alone rewards forgetting the others.
        extra = augment_batch(x_tune, kind, np.random.default_rng(seed + 1), noise_scale=0.0, pool=x_all)
        x_tune, y_tune = np.concatenate([x_tune, extra]), None
    if extra_inputs is not None and len(extra_inputs) and teacher_of is not None:
        # Unlabelled rows (e.g. synthesize_for_classes): the teacher labels every row, so hard labels go.
        extra_inputs = np.asarray(extra_inputs, dtype=np.float32)
        cut = int(round(len(extra_inputs) * config.holdout)) if x_tune is not None else 0
        if cut:
            x_tune, y_tune = np.concatenate([x_tune, extra_inputs[:cut]]), None
        x_all, y_all = np.concatenate([x_all, extra_inputs[cut:]]), None
    t_tune = teacher_of(x_tune) if (teacher_of and x_tune is not None) else None
    if _restart:  # another run of a soup: the same held-out rows, its own batches, noise and init
        rng = np.random.default_rng([seed, _restart])

    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.manual_seed(seed + 7919 * (_restart or 0))
    torch.use_deterministic_algorithms(True, warn_only=True)
    noise_scale = 0.02 * float(x_all.std()) if kind != "none" else 0.0
    params = [p for p in (trainable if trainable is not None else module.parameters()) if p.requires_grad]
    # a soup's run (_restart set) hands its held-out rows back to judge the soup on
    result = FineTuneReport(holdout=(x_tune, y_tune, t_tune) if _restart is not None and x_tune is not None else None)
    try:
        if config.epochs == 0 or not params:
            return result
        groups = []
        for p in params:
            rms = float(p.detach().pow(2).mean().sqrt()) if p.numel() else 0.0
            groups.append({"params": [p], "lr": min(config.lr, config.max_relative_step * rms) if rms > 0 else config.lr})
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = max(1, int(np.ceil(len(x_all) / config.batch_size)))
        total = steps_per_epoch * config.epochs
        if config.schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        elif config.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], total_steps=total)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        best_state, stale = None, 0
        if config.keep_start and x_tune is not None and callbacks.first_eligible_epoch == 0:
            # A few epochs on a few hundred rows can make a well-refit model worse (ResNet-8 pruned
            # and refit on 500 CIFAR rows: every epoch lost agreement); then the start is the answer.
            name, value = _score(predict(module, x_tune), y_tune, t_tune)
            result.best_score, result.best_epoch, result.score_name = value, -1, name
            best_state = copy.deepcopy(module.state_dict())
            result.start_score = value
        averaged = None
        if config.ema > 0 and callbacks.after_step is None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        judged = module if averaged is None else averaged.module
        progress = _progress(config.progress)
        with progress:
            task = progress.add_task("fine-tuning", total=total)
            for epoch in range(config.epochs):
                if callbacks.before_epoch:
                    callbacks.before_epoch(module, epoch)
                module.train()
                order = rng.permutation(len(x_all))
                losses = []
                for step in range(steps_per_epoch):
                    idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                    xb = augment_batch(x_all[idx], kind, rng, noise_scale=noise_scale, pool=x_all)
                    tb = torch.from_numpy(np.ascontiguousarray(teacher_of(xb))) if teacher_of else None
                    # Mixed/synthetic rows have no true class: only the teacher can label them.
                    labelled = y_all is not None and not (kind in TEACHER_ONLY_AUGMENTATIONS and tb is not None)
                    yb = torch.from_numpy(y_all[idx]) if labelled else None
                    inputs = torch.from_numpy(np.ascontiguousarray(xb))
                    out = module(inputs)
                    if tb is None:
                        loss = torch.nn.functional.nll_loss(log_probabilities(out), yb)
                    else:
                        loss = distillation_loss(out, tb, yb, temperature=config.temperature, alpha=config.alpha)
                    if callbacks.extra_loss:
                        loss = loss + callbacks.extra_loss(inputs)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if callbacks.after_backward:
                        callbacks.after_backward(module)
                    optimizer.step()
                    scheduler.step()
                    if callbacks.after_step:
                        callbacks.after_step(module)
                    if averaged is not None:
                        averaged.update_parameters(module)
                    losses.append(float(loss.detach()))
                    progress.update(task, advance=1, description=f"epoch {epoch + 1}/{config.epochs} loss {np.mean(losses):.4f}")
                entry = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                result.epochs_run = epoch + 1
                if x_tune is not None:
                    name, value = _score(predict(judged, x_tune), y_tune, t_tune)
                    entry[name] = value
                    result.score_name = name
                    if epoch < callbacks.first_eligible_epoch:
                        pass
                    elif result.best_score is None or value > result.best_score:
                        result.best_score, result.best_epoch, stale = value, epoch, 0
                        best_state = copy.deepcopy(judged.state_dict())
                    else:
                        stale += 1
                result.history.append(entry)
                if report:
                    report(f"epoch {epoch + 1}/{config.epochs}", (epoch + 1) / config.epochs)
                if x_tune is not None and stale > config.patience and epoch >= callbacks.first_eligible_epoch:
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        elif averaged is not None:   # no split to judge epochs on: the average is the result
            module.load_state_dict(averaged.module.state_dict())
        module.eval()
        return result
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _greedy_soup(module, train, *, config: FineTune, seed: int, **kwargs) -> FineTuneReport:
    """``config.restarts`` runs from the same start, then the greedy soup (see ``FineTune.restarts``)."""
    import torch

    start = copy.deepcopy(module.state_dict())
    single = replace(config, restarts=1)
    runs = []
    for i in range(config.restarts):
        module.load_state_dict(start)
        run = fine_tune(module, train, config=single, seed=seed, _restart=i, **kwargs)
        runs.append((run, copy.deepcopy(module.state_dict())))
    holdout = runs[0][0].holdout
    if holdout is None or any(r.best_score is None for r, _ in runs):
        # nothing to judge a soup on: the first run, as a plain fine-tune would have returned it
        module.load_state_dict(runs[0][1])
        return runs[0][0]
    x_tune, y_tune, t_tune = holdout

    def mix(states):
        return {k: (torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v)
                for k, v in states[0].items()}

    def judge(state):
        module.load_state_dict(state)
        return _score(predict(module, x_tune), y_tune, t_tune)[1]

    order = sorted(range(len(runs)), key=lambda i: -runs[i][0].best_score)
    chosen = [order[0]]
    best = runs[order[0]][0].best_score
    for i in order[1:]:
        value = judge(mix([runs[j][1] for j in chosen + [i]]))
        if value >= best:
            chosen, best = chosen + [i], value
    module.load_state_dict(mix([runs[j][1] for j in chosen]))
    module.eval()
    first = runs[order[0]][0]
    return FineTuneReport(epochs_run=sum(r.epochs_run for r, _ in runs), best_epoch=first.best_epoch, best_score=best,
                          score_name=first.score_name, history=first.history, start_score=first.start_score,
                          runs=[{"restart": i, "best_score": r.best_score, "best_epoch": r.best_epoch}
                                for i, (r, _) in enumerate(runs)], soup=sorted(chosen))


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True, disable=not enabled or not sys.stderr.isatty())


# ------------------------------------------------------------------------------------------------
# Glue for passes
# ------------------------------------------------------------------------------------------------

def training_data(model, ctx):
    """(train, tune) Datasets for a pass, fitted to ``model``: ``ctx.train`` with ``ctx.tune`` for early
    stopping, or ``ctx.tune`` alone (then a random holdout of it stops early), or ``ctx.calib``."""
    from .data import fit_to_model

    train, tune = ctx.train, ctx.tune
    if train is None:
        train, tune = (ctx.tune, None) if ctx.tune is not None else (ctx.calib, None)
    if train is None:
        raise DataError("this pass fine-tunes and needs data: give PassContext(train=...) or tune=... (labels optional)")
    train = fit_to_model(train, model)
    tune = fit_to_model(tune, model) if tune is not None else None
    return train, tune


def recover(module, model, ctx, config: FineTune, *, callbacks: Callbacks | None = None, trainable=None,
            teacher: Any = "default", extra_inputs: np.ndarray | None = None) -> FineTuneReport:
    """Fine-tune ``module`` (derived from ``model``) to recover quality, distilling from the original.

    The teacher is ``ctx.teacher`` if given, else ``model`` itself (the pass's input, run on ONNX
    Runtime). ``config.epochs == 0`` skips training.
    """
    if config.epochs == 0:
        return FineTuneReport()
    train, tune = training_data(model, ctx)
    if teacher == "default":
        teacher = ctx.teacher if ctx.teacher is not None else model
    return fine_tune(module, train, tune=tune, teacher=teacher, config=config, seed=ctx.seed,
                     callbacks=callbacks, trainable=trainable, report=ctx.report, extra_inputs=extra_inputs)


def fine_tune_config(epochs: int, lr: float, /, **overrides) -> FineTune:
    """A :class:`FineTune` with a pass's ``epochs``/``lr`` and optional overrides from ``ctx.options``."""
    return replace(FineTune(epochs=epochs, lr=lr), **overrides)
