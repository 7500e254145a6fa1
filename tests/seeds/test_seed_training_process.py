"""The optimizer and callback code of the *Training Process* notes
(/work/shared/seeds/004_e9f0a6dc0fa32683.txt), run on rnnkit with only the import line changed.

Kept verbatim from the notes: the user-written steppers (`sgd_cb`, `average_grad`,
`momentum_step`, `average_sqr_grad`, `rms_prop_step`), the `partial(Optimizer, cbs=...)` lines,
`learn.fit(3, 0.03)`, `learn.fit_one_cycle(3, 0.03)`, `learn.recorder.plot_sched()`,
`learn.fit_one_cycle(3, 0.003)`, the default-Adam baseline, `get_learner(opt_func=SGD)` +
`learn.lr_find()` + `fit_one_cycle(3, 0.03, moms=(0,0,0))`, `print_source` of the library
pieces the notes print, `help(event)`, the book's own `TerminateOnNaNCallback`, and the
momentum-plot cell.

Replaced: the notes' `get_data`/`get_learner` train `cnn_learner(resnet34)` on Imagenette,
which cannot run offline on a 2-core CPU. The stand-in has the same role — `get_learner(**kwargs)`
builds a fresh `Learner` with `metrics=accuracy` and passes `**kwargs` (the `opt_func`) through,
then `.to_fp16()` as the notes do — over a balanced, deterministic subset of MNIST_SAMPLE
(3 vs 7: 2,000 train / 500 valid images) with a small MLP that has a BatchNorm layer (so the
`train_bn` / `wd_bn_bias` paths are exercised, like resnet34's).
"""
from __future__ import annotations

import inspect
import io
import tarfile
from pathlib import Path

import pytest

from rnnkit.all import *  # the only line changed from the notes (`from fastbook import *`)

ARCHIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist_sample" / "mnist_sample.tgz"
N_TRAIN, N_VALID = 1000, 250  # per class: a balanced, deterministic subset, for speed

# The notes' steppers call the pre-1.5 overloads `add_(Number, Tensor)` and
# `addcdiv_(Number, Tensor, Tensor)`; torch 2.13 still runs them but warns that they are
# deprecated. We keep the notes' code verbatim, so silence exactly those two warnings. (torch
# emits them once per process, so whichever test calls an overload first sees it: each test
# filters the one its steppers use.)
_DEPRECATED_ADD = pytest.mark.filterwarnings("ignore:This overload of add_ is deprecated:UserWarning")
_DEPRECATED_ADDCDIV = pytest.mark.filterwarnings("ignore:This overload of addcdiv_ is deprecated:UserWarning")


# ---- the notes' own helper (second cell), verbatim ----
def print_source(obj):
    for line in inspect.getsource(obj).split("\n"):
        print(line)


# ---- stand-in for the notes' get_data / get_learner ----
def _read_mnist_sample():
    from PIL import Image  # Pillow comes with matplotlib

    want = {(split, cls): n for split, n in (("train", N_TRAIN), ("valid", N_VALID)) for cls in ("3", "7")}
    found: dict[tuple[str, str], list[tuple[str, bytes]]] = {k: [] for k in want}
    with tarfile.open(ARCHIVE) as tf:
        for m in tf:
            parts = m.name.split("/")  # mnist_sample/{train,valid}/{3,7}/N.png
            if m.isfile() and len(parts) == 4 and parts[3].endswith(".png") and (parts[1], parts[2]) in found:
                found[parts[1], parts[2]].append((parts[3], tf.extractfile(m).read()))

    def items(split):
        res = []
        for cls in ("3", "7"):
            # sort by file name so the subset does not depend on the archive's member order
            for _, png in sorted(found[split, cls])[:want[split, cls]]:
                img = Image.open(io.BytesIO(png)).convert("L")
                x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, 28, 28).float() / 255
                res.append((x, torch.tensor(int(cls == "7"))))
        return res

    return items("train"), items("valid")


@pytest.fixture(scope="module")
def dls():
    if not ARCHIVE.exists():
        pytest.skip(f"MNIST_SAMPLE archive not found at {ARCHIVE} (the shared data folder sits beside the repo)")
    train, valid = _read_mnist_sample()
    assert len(train) == 2 * N_TRAIN and len(valid) == 2 * N_VALID
    return DataLoaders.from_dsets(train, valid, bs=64)


@pytest.fixture
def get_learner(dls):
    def get_learner(**kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(),
                              nn.Linear(64, 2))
        # `.to_fp16()` as in the notes: float16 autocast + loss scaling on a CPU with native float16; on one
        # without it (most CPUs) MixedPrecision warns and trains in float32, and the seed runs the same
        return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, **kwargs).to_fp16()
    return get_learner


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _trains(learn, fit, min_acc):
    """Run the notes' `fit` line on `learn`; it must learn 3 vs 7 and lower both losses."""
    torch.manual_seed(0)
    loss0 = learn.validate()[0]  # the untrained model's valid loss (~ln 2)
    fit()
    vals = learn.recorder.values
    assert len(vals) == 3
    train_loss, valid_loss, acc = vals[-1]
    assert valid_loss < loss0 / 2, (loss0, vals)
    assert train_loss < vals[0][0], vals
    assert acc > min_acc, vals
    return acc


# ---- Establishing a Baseline ----
def test_default_optimizer_is_adam_with_fastai_defaults(get_learner):
    # Default fastai optimizer
    learn = get_learner()
    acc = _trains(learn, lambda: learn.fit_one_cycle(3, 0.003), 0.93)
    assert learn.opt_func is Adam
    params = inspect.signature(Adam).parameters
    assert list(params)[:2] == ["params", "lr"]
    assert {k: params[k].default for k in ("mom", "sqr_mom", "eps", "wd", "decouple_wd")} == \
        dict(mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True)


def test_plain_sgd_baseline(get_learner):
    # Use plain SGD for baseline
    learn = get_learner(opt_func=SGD)
    sugg = learn.lr_find()
    assert type(sugg).__name__ == "SuggestedLRs" and sugg._fields == ("valley",)
    assert 1e-5 < sugg.valley < 10, sugg
    # Disable momentum for baseline
    acc = _trains(learn, lambda: learn.fit_one_cycle(3, 0.03, moms=(0,0,0)), 0.93)
    assert all(m == 0 for m in learn.recorder.hps["mom"])


# ---- A Generic Optimizer ----
def test_print_source_of_the_optimizer_pieces(capsys):
    print_source(Optimizer)
    print_source(Adam)
    print_source(step_stat)
    print_source(adam_step)
    print_source(debias)
    print_source(weight_decay)
    print_source(l2_reg)
    print_source(Learner._do_one_batch)
    out = capsys.readouterr().out
    for s in ("class Optimizer", "def Adam", "def step_stat", "def adam_step", "def debias",
              "def weight_decay", "def l2_reg", "def _do_one_batch"):
        assert s in out


@_DEPRECATED_ADD
def test_generic_optimizer_with_sgd_cb(get_learner):
    # Custom optimizer callback that performs a single SGD step
    # when Tensor.add_ in PyTorch is passed two parameters, they are multiplied together before the addition
    def sgd_cb(p, lr, **kwargs): p.data.add_(-lr, p.grad.data)

    opt_func = partial(Optimizer, cbs=[sgd_cb])
    learn = get_learner(opt_func=opt_func)
    acc = _trains(learn, lambda: learn.fit(3, 0.03), 0.93)


# ---- Momentum ----
def test_momentum_plot_cell():
    ns: dict = {}
    exec("from rnnkit.all import *", ns)
    exec(compile(MOMENTUM_PLOT_CELL, "<notes: momentum plot>", "exec"), ns)
    assert len(ns["res"]) == 100


MOMENTUM_PLOT_CELL = '''
# Get 100 evenly spaced input values over the interval [-4,4]
x = np.linspace(-4, 4, 100)
# Function to plot
y = 1 - (x/3) ** 2
# Add noise to both input and output
x1 = x + np.random.randn(100) * 0.1
y1 = y + np.random.randn(100) * 0.1
_,axs = plt.subplots(2,2, figsize=(12,8))
# List of beta values
betas = [0.5,0.7,0.9,0.99]
idx = x1.argsort()
for beta,ax in zip(betas, axs.flatten()):
    ax.scatter(x1,y1)
    avg,res = 0,[]
    for i in idx:
        avg = beta * avg + (1-beta) * y1[i]
        res.append(avg)#/(1-beta**(i+1)))
    ax.plot(x1[idx],np.array(res), color='red');
    ax.set_title(f'beta={beta}')
'''


@_DEPRECATED_ADD
def test_momentum_from_user_steppers(get_learner):
    # Custom callback to calculate the average gradient
    def average_grad(p, mom, grad_avg=None, **kwargs):
        # Set starting average to zero for all parameters
        if grad_avg is None: grad_avg = torch.zeros_like(p.grad.data)
        return {'grad_avg': grad_avg*mom + p.grad.data}
    # Custom callback that performs a single SGD with momentum step
    def momentum_step(p, lr, grad_avg, **kwargs): p.data.add_(-lr, grad_avg)

    # Start training with a beta value of 0.9
    opt_func = partial(Optimizer, cbs=[average_grad,momentum_step], mom=0.9)
    # Learner automatically schedules the momentum and learning rate
    learn = get_learner(opt_func=opt_func)
    acc = _trains(learn, lambda: learn.fit_one_cycle(3, 0.03), 0.93)
    fig = learn.recorder.plot_sched()
    assert fig is not None
    # fit_one_cycle starts mom at 0.95, goes down to 0.85 and back up to 0.95
    moms = learn.recorder.hps["mom"]
    assert moms[0] == pytest.approx(0.95) and min(moms) == pytest.approx(0.85, abs=1e-3)
    assert moms[-1] == pytest.approx(0.95, abs=1e-3)


# ---- RMSProp ----
@_DEPRECATED_ADDCDIV
def test_rmsprop_from_user_steppers(get_learner):
    # Custom callback that calculated the moving average of the gradients squared
    def average_sqr_grad(p, sqr_mom, sqr_avg=None, **kwargs):
        # Set starting average to zero for all parameters
        if sqr_avg is None: sqr_avg = torch.zeros_like(p.grad.data)
        return {'sqr_avg': sqr_mom*sqr_avg + (1-sqr_mom)*p.grad.data**2}
    # Custom callback that perform a single rmsprop step
    def rms_prop_step(p, lr, sqr_avg, eps, grad_avg=None, **kwargs):
        denom = sqr_avg.sqrt().add_(eps)
        p.data.addcdiv_(-lr, p.grad, denom)

    opt_func = partial(Optimizer, cbs=[average_sqr_grad,rms_prop_step], sqr_mom=0.99, eps=1e-7)
    learn = get_learner(opt_func=opt_func)
    acc = _trains(learn, lambda: learn.fit_one_cycle(3, 0.003), 0.93)


# ---- Callbacks ----
def test_help_event_lists_every_event_of_the_notes(capsys):
    # List of available events
    help(event)
    out = capsys.readouterr().out
    notes_events = ["after_batch", "after_cancel_batch", "after_cancel_epoch", "after_cancel_fit",
                    "after_cancel_step", "after_cancel_train", "after_cancel_validate", "after_create",
                    "after_epoch", "after_fit", "after_loss", "after_pred", "after_step", "after_train",
                    "after_validate", "before_backward", "before_batch", "before_epoch", "before_fit",
                    "before_step", "before_train", "before_validate"]
    for name in notes_events:
        assert name in out
        assert getattr(event, name) == name
    assert event.after_cancel_fit == 'after_cancel_fit'


def test_cancel_exceptions_of_ex_docs():
    # `_ex_docs` from the notes: each exception and where it sends the loop
    _ex_docs = {'CancelBatchException': 'Skip the rest of this batch and go to `after_batch`',
                'CancelTrainException': 'Skip the rest of the training part of the epoch and go to `after_train`',
                'CancelValidException': 'Skip the rest of the validation part of the epoch and go to `after_validate`',
                'CancelEpochException': 'Skip the rest of this epoch and go to `after_epoch`',
                'CancelStepException': 'Skip stepping the optimizer',
                'CancelFitException': 'Interrupts training and go to `after_fit`'}
    ns = globals()
    for name, doc in _ex_docs.items():
        exc = ns[name]
        assert issubclass(exc, Exception)
        # rnnkit's docstrings say the same thing (modulo "Interrupt"/"Interrupts" and a final period)
        assert doc.split(" ")[-1] in exc.__doc__
    assert TerminateOnNaNCallback.order == -9  # as printed in the notes


def test_books_terminate_on_nan_callback_stops_fit(get_learner):
    # the book's version of the callback, as printed in the notes
    class TerminateOnNaNCallback(Callback):
        run_before=Recorder
        def after_batch(self):
            if torch.isinf(self.loss) or torch.isnan(self.loss):
                raise CancelFitException

    class SeenCancelFit(Callback):
        def before_fit(self): self.seen = []
        def after_cancel_fit(self): self.seen.append('after_cancel_fit')
        def after_fit(self): self.seen.append('after_fit')

    class NaNLossAtBatch3(Callback):
        order = -20  # before TerminateOnNaNCallback's after_batch
        def after_loss(self):
            if self.training and self.iter == 3: self.learn.loss = self.loss * float('nan')

    seen = SeenCancelFit()
    learn = get_learner(opt_func=SGD, cbs=[TerminateOnNaNCallback(), seen, NaNLossAtBatch3()])
    learn.fit(3, 0.03)
    assert seen.seen == ['after_cancel_fit', 'after_fit']
    assert learn.epoch == 0 and learn.iter == 3
