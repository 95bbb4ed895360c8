"""The shared fine-tuning loop: deterministic, early stop keeps the best epoch, augmentation, config errors."""

import numpy as np
import pytest
import torch

from edgeopt.data import Dataset
from edgeopt.errors import ConfigError, DataError
from edgeopt.training import FineTune, augment_batch, fine_tune


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return Dataset(x, y)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_same_seed_same_weights():
    cfg = FineTune(epochs=2, lr=1e-2, progress=False, augment="noise", max_relative_step=1.0)
    a, b = _net(), _net()
    fine_tune(a, _data(), config=cfg, seed=7)
    fine_tune(b, _data(), config=cfg, seed=7)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_learns_and_reports_history():
    net = _net()
    report = fine_tune(net, _data(), tune=_data(100, seed=1), config=FineTune(epochs=10, lr=1e-2, batch_size=16, progress=False, patience=10, max_relative_step=1.0,
                                                                               schedule="onecycle", augment="none"))
    assert report.score_name == "top1" and report.best_score > 0.8
    assert len(report.history) == report.epochs_run


def test_unlabeled_needs_teacher_and_works_with_one():
    data = Dataset(_data().x)
    with pytest.raises(DataError, match="teacher"):
        fine_tune(_net(), data, config=FineTune(epochs=1, progress=False))
    teacher = _net(seed=3)
    report = fine_tune(_net(), data, teacher=teacher, config=FineTune(epochs=2, lr=1e-2, progress=False))
    assert report.score_name == "agreement"


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"schedule": "step"}, {"augment": "mixup"}, {"alpha": 2},
                                 {"temperature": 0}, {"batch_size": 0}, {"ema": 1.0}, {"ema": -0.1}, {"restarts": 0},
                                 {"restarts": 2.5}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        FineTune(**bad).validate()


def test_ema_keeps_the_averaged_weights():
    """With a decay near 1 the average barely leaves the weights after the first step; the result is
    that average, not the last step's weights (which moved far in 5 epochs at this rate)."""
    start = [p.detach().clone() for p in _net().parameters()]
    common = dict(epochs=5, lr=5e-2, progress=False, augment="none", max_relative_step=1.0, holdout=0.0, schedule="constant")
    plain, averaged = _net(), _net()
    fine_tune(plain, _data(), config=FineTune(**common), seed=0)
    fine_tune(averaged, _data(), config=FineTune(**common, ema=0.9999), seed=0)
    moved = lambda net: sum(float((p.detach() - s).norm()) for p, s in zip(net.parameters(), start))
    assert moved(averaged) < 0.25 * moved(plain)   # about one AdamW step (lr per element) against five epochs
    # judged on a tuning split, the kept epoch is an averaged state too, and it still learns
    report = fine_tune(_net(), _data(), tune=_data(100, seed=1),
                       config=FineTune(epochs=6, lr=1e-2, batch_size=16, progress=False, patience=10, augment="none",
                                       max_relative_step=1.0, ema=0.9))
    assert report.best_score > 0.8


def test_restarts_keep_a_greedy_soup_no_worse_than_the_best_run():
    from edgeopt.training import predict

    tune = _data(100, seed=1)
    cfg = FineTune(epochs=3, lr=1e-2, batch_size=16, progress=False, patience=10, augment="noise", max_relative_step=1.0,
                   restarts=3)
    net = _net()
    report = fine_tune(net, _data(), tune=tune, config=cfg, seed=0)
    assert [r["restart"] for r in report.runs] == [0, 1, 2]
    best_run = max(report.runs, key=lambda r: r["best_score"])
    assert best_run["restart"] in report.soup and report.best_score >= best_run["best_score"]
    # the runs differ (own batches and noise), and the module holds the soup the report scores
    assert len({r["best_score"] for r in report.runs}) > 1 or len(report.soup) > 1
    assert (predict(net, tune.x).argmax(1) == tune.y).mean() == pytest.approx(report.best_score)
    # restart 0 is exactly a plain run with the same seed
    plain = _net()
    single = fine_tune(plain, _data(), tune=tune, config=FineTune(**{**cfg.__dict__, "restarts": 1}), seed=0)
    assert single.best_score == report.runs[0]["best_score"]


def test_time_shift_moves_only_time_axis():
    rng = np.random.default_rng(0)
    x = np.zeros((4, 49, 10, 1), np.float32)
    x[:, 20, :, 0] = 1.0
    out = augment_batch(x, "time_shift", rng, noise_scale=0.0)
    assert out.shape == x.shape
    # each sample's peak stays a full row of coefficients, possibly at another time step
    for sample in out:
        row = sample[..., 0].sum(axis=1).argmax()
        assert np.allclose(sample[row, :, 0], 1.0)


def test_small_weights_get_a_capped_learning_rate():
    """A tensor of tiny weights (a first layer fed 0..255 pixels) must survive a short recovery run."""
    net = _net()
    with torch.no_grad():
        net[0].weight.mul_(0.01)
    before = net[0].weight.detach().clone()
    fine_tune(net, _data(), config=FineTune(epochs=3, lr=1e-2, progress=False, augment="none"), seed=0)
    relative_change = float((net[0].weight - before).norm() / before.norm())
    assert relative_change < 0.5


def test_synthesized_rows_reach_classes_missing_from_their_source(dscnn, kws_data):
    """Rows of 5 words only, pushed up the teacher's gradients toward uniform targets, cover (nearly)
    every class of the teacher."""
    from edgeopt.torch_twin import to_torch
    from edgeopt.training import synthesize_for_classes

    source = kws_data.x[kws_data.y < 5][::10]
    teacher = to_torch(dscnn)
    rows = synthesize_for_classes(teacher, source, 240, np.random.default_rng(0), balance=False)
    assert rows.shape == (240,) + source.shape[1:] and np.isfinite(rows).all()
    classes = dscnn.predict(rows)[0].argmax(1)  # judged by the ONNX original, not the twin that made them
    assert len(np.unique(classes)) >= 10, np.bincount(classes, minlength=12)
    assert np.mean(classes >= 5) > 0.4  # most targets are classes the source rows never showed


def test_balanced_synthesis_fills_the_classes_its_source_lacks(dscnn, kws_data):
    """The source rows already cover words 0-4 (about as many rows as an even share of rows plus
    synthetic rows), so balanced targets go to the 7 other classes; uniform targets spend 5/12 of
    the rows on classes the source has."""
    from edgeopt.torch_twin import to_torch
    from edgeopt.training import synthesize_for_classes

    source = kws_data.x[kws_data.y < 5][::10]
    teacher = to_torch(dscnn)
    judged = {}
    for balance in (True, False):
        rows = synthesize_for_classes(teacher, source, 240, np.random.default_rng(0), balance=balance)
        judged[balance] = dscnn.predict(rows)[0].argmax(1)
    missing = {balance: float(np.mean(classes >= 5)) for balance, classes in judged.items()}
    assert missing[True] > 0.75 and missing[True] > missing[False] + 0.15, missing
    assert len(np.unique(judged[True][judged[True] >= 5])) == 7  # every missing class, not one of them


def test_teacher_mix_keeps_shape_and_leaves_the_source_rows(kws_data):
    from edgeopt.training import teacher_mix

    x = kws_data.x[:64]
    out = teacher_mix(x, np.random.default_rng(0), noise_scale=0.0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.mean(np.abs(out - x).reshape(len(x), -1).max(1) > 1e-3) > 0.9


def test_keep_start_returns_the_starting_weights_when_no_epoch_beats_them():
    """Fine-tuning that only makes the model worse (here: an absurd learning rate) must not win over
    the starting weights when keep_start is set."""
    import torch

    from edgeopt.data import Dataset
    from edgeopt.training import FineTune, fine_tune

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype("float32")
    w = rng.standard_normal((8, 3)).astype("float32")
    y = (x @ w).argmax(1)
    net = torch.nn.Linear(8, 3)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w.T))
        net.bias.zero_()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    config = FineTune(epochs=2, lr=5.0, max_relative_step=100.0, progress=False, augment="none", keep_start=True)
    report = fine_tune(net, Dataset(x, y), config=config)
    assert report.start_score == 1.0 and report.best_epoch == -1
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())
