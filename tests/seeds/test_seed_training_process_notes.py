"""The optimizer code of the *Training Process* notes, run on rnnkit with only the import
line changed.

The notes train `cnn_learner(resnet34)` on Imagenette, which cannot run offline on a 2-core
CPU; `get_data`/`get_learner` are replaced by a stand-in with the same role (MNIST_SAMPLE,
3 vs 7, a small MLP with batch norm). Everything else — the user-written steppers, the
`partial(Optimizer, cbs=...)` lines, `fit`, `fit_one_cycle`, `lr_find`, `plot_sched` — is the
notes' code.
"""
from __future__ import annotations

import inspect
import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from rnnkit.all import *  # the only line changed (`from fastbook import *`)

ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist_sample" / "mnist_sample.tgz"
N_TRAIN, N_VALID = 1000, 400  # per class, a deterministic subset for speed


@pytest.fixture(scope="module")
def dls():
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not found (the shared data folder is not beside the repo)")
    from PIL import Image

    want = {("train", "3"): N_TRAIN, ("train", "7"): N_TRAIN, ("valid", "3"): N_VALID, ("valid", "7"): N_VALID}
    items: dict[tuple[str, str], list] = {k: [] for k in want}
    with tarfile.open(ARCHIVE) as tf:
        for m in tf:
            parts = m.name.split("/")
            if len(parts) != 4 or not m.isfile() or not parts[3].endswith(".png"):
                continue
            key = (parts[1], parts[2])
            if key in items and len(items[key]) < want[key]:
                img = np.array(Image.open(io.BytesIO(tf.extractfile(m).read())), dtype=np.float32) / 255.0
                items[key].append((torch.from_numpy(img)[None], torch.tensor(int(parts[2] == "7"))))
    train = items[("train", "3")] + items[("train", "7")]
    valid = items[("valid", "3")] + items[("valid", "7")]
    torch.manual_seed(0)
    return DataLoaders.from_dsets(train, valid, bs=64, device="cpu")


@pytest.fixture
def get_learner(dls):
    def get_learner(**kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
        return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, **kwargs)
    return get_learner


def _acc(learn):
    return learn.recorder.values[-1][2]


def test_default_optimizer_is_fastai_adam(get_learner):
    learn = get_learner()
    assert learn.opt_func is Adam
    sig = inspect.signature(Adam).parameters
    assert {k: sig[k].default for k in ("mom", "sqr_mom", "eps", "wd", "decouple_wd")} == \
        dict(mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True)
    learn.fit_one_cycle(3, 0.003)
    assert _acc(learn) > 0.95


def test_plain_sgd_baseline_with_lr_find(get_learner):
    learn = get_learner(opt_func=SGD)
    res = learn.lr_find(show_plot=False)
    assert 1e-6 < res.valley < 10
    learn.fit_one_cycle(3, 0.03, moms=(0,0,0))
    assert _acc(learn) > 0.9


def test_generic_optimizer_with_user_sgd_step(get_learner):
    def sgd_cb(p, lr, **kwargs): p.data.add_(-lr, p.grad.data)

    opt_func = partial(Optimizer, cbs=[sgd_cb])
    learn = get_learner(opt_func=opt_func)
    with warnings.catch_warnings():
        # the notes' sgd_cb uses the deprecated add_(Number, Tensor) overload
        warnings.filterwarnings("ignore", message="This overload of add_ is deprecated")
        learn.fit(3, 0.03)
    assert _acc(learn) > 0.9


def test_momentum_from_user_steppers(get_learner):
    def average_grad(p, mom, grad_avg=None, **kwargs):
        if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
        return {'grad_avg': grad_avg*mom + p.grad.data}

    def momentum_step(p, lr, grad_avg, **kwargs): p.data.add_(-lr, grad_avg)

    opt_func = partial(Optimizer, cbs=[average_grad,momentum_step], mom=0.9)
    learn = get_learner(opt_func=opt_func)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This overload of add_ is deprecated")
        learn.fit_one_cycle(3, 0.03)
    assert _acc(learn) > 0.9
    fig = learn.recorder.plot_sched()
    assert fig is not None
    assert learn.recorder.hps["mom"][0] == pytest.approx(0.95)


def test_rmsprop_from_user_steppers(get_learner):
    def average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
        if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad.data)
        return {'sqr_avg': sqr_mom*sqr_avg + (1-sqr_mom)*p.grad.data**2}

    def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
        denom = sqr_avg.sqrt().add_(eps)
        p.data.addcdiv_(p.grad, denom, value=-lr)

    opt_func = partial(Optimizer, cbs=[average_sqr_grad,rms_prop_step], sqr_mom=0.99, eps=1e-7)
    learn = get_learner(opt_func=opt_func)
    learn.fit_one_cycle(3, 0.003)
    assert _acc(learn) > 0.9


def test_events_and_cancel_exceptions_of_the_notes():
    assert [event.after_cancel_fit, event.before_backward, event.after_step] == \
        ['after_cancel_fit', 'before_backward', 'after_step']
    for exc in (CancelBatchException, CancelTrainException, CancelValidException, CancelEpochException,
                CancelStepException, CancelFitException):
        assert issubclass(exc, Exception) and exc.__doc__
    assert TerminateOnNaNCallback.order == -9
