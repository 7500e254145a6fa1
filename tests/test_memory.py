import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit.losses as losses
from rnnkit.losses import CrossEntropyLossFlat
from rnnkit.memory import BufferPool, buffer_pool, pooling_applies
from rnnkit.models.linear import PooledLinear

MB = 1 << 20


def _pooled(t):
    return any(t.untyped_storage().data_ptr() == s.data_ptr() for s in buffer_pool._buffers)


@pytest.fixture
def small_pool(monkeypatch):
    """The process pool with a 4 KiB threshold, emptied before and after, so tiny tensors exercise it."""
    buffer_pool.clear()
    monkeypatch.setattr(buffer_pool, "min_bytes", 4096)
    yield buffer_pool
    buffer_pool.clear()


def test_pool_hands_a_buffer_out_again_once_it_is_free():
    pool = BufferPool(max_buffers=2, min_bytes=MB)
    a = pool.empty((512, 1024), torch.float32, torch.device("cpu"))  # 2 MiB
    ptr = a.data_ptr()
    del a
    b = pool.empty((500, 1024), torch.float32, torch.device("cpu"))  # smaller: fits the same buffer
    assert b.data_ptr() == ptr
    assert b.shape == (500, 1024) and b.is_contiguous() and b._base is None
    assert len(pool._buffers) == 1


@pytest.mark.parametrize("keep", ["tensor", "view", "numpy", "saved_for_backward"])
def test_pool_never_hands_out_memory_that_is_still_referenced(keep):
    pool = BufferPool(max_buffers=4, min_bytes=MB)
    a = pool.empty((512, 1024), torch.float32, torch.device("cpu"))
    a.fill_(1.0)
    w = torch.ones(1024, requires_grad=True)
    held = {"tensor": lambda: a, "view": lambda: a[3:5], "numpy": lambda: a.numpy(),
            "saved_for_backward": lambda: (a * w).sum()}[keep]()
    ptr = a.data_ptr()
    del a
    b = pool.empty((512, 1024), torch.float32, torch.device("cpu"))
    assert b.data_ptr() != ptr  # a new buffer: the first one is still in use
    b.fill_(2.0)
    if keep == "saved_for_backward":
        held.backward()
        assert torch.equal(w.grad, torch.full((1024,), 512.0))  # the saved tensor kept its values
    else:
        assert float(torch.as_tensor(held).flatten()[0]) == 1.0


def test_pool_holds_at_most_max_buffers_and_replaces_small_free_ones():
    pool = BufferPool(max_buffers=2, min_bytes=MB)
    cpu = torch.device("cpu")
    busy = [pool.empty((MB,), torch.float32, cpu) for _ in range(3)]  # 4 MiB each; the third is unpooled
    assert len(pool._buffers) == 2 and not any(busy[2].data_ptr() == s.data_ptr() for s in pool._buffers)
    del busy
    big = pool.empty((4 * MB,), torch.float32, cpu)  # 16 MiB: no free buffer is large enough
    assert len(pool._buffers) == 2 and pool.nbytes < 2 * 16 * MB + 16 * MB
    assert any(big.data_ptr() == s.data_ptr() for s in pool._buffers)


def test_pool_leaves_small_requests_and_other_devices_to_torch():
    pool = BufferPool(min_bytes=MB)
    assert pool.empty((10,), torch.float32, torch.device("cpu")).numel() == 10
    meta = pool.empty((MB,), torch.float32, torch.device("meta"))
    assert meta.device.type == "meta"
    assert pool._buffers == []


def test_pooling_applies_only_to_large_float_cpu_outputs_outside_autocast():
    x = torch.zeros(2, dtype=torch.float32)
    assert pooling_applies(x, buffer_pool.min_bytes)
    assert not pooling_applies(x, buffer_pool.min_bytes - 1)
    assert not pooling_applies(x.bfloat16(), buffer_pool.min_bytes)
    assert not pooling_applies(torch.zeros(2, device="meta"), buffer_pool.min_bytes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not pooling_applies(x, buffer_pool.min_bytes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(2, 300), reduction=st.sampled_from(["mean", "sum", "none"]),
       n_ignored=st.integers(0, 5), chunk_rows=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_chunked_cross_entropy_matches_torch_in_value_and_gradient(n, c, reduction, n_ignored, chunk_rows, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 4).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    t[: min(n_ignored, n - 1)] = -100  # keep one valid target so the mean is defined
    chunk_bytes = chunk_rows * c * 8
    old = losses._CE_CHUNK_BYTES
    losses._CE_CHUNK_BYTES = chunk_bytes
    try:
        loss = losses._ChunkedCrossEntropy.apply(x, t, -100, reduction)
    finally:
        losses._CE_CHUNK_BYTES = old
    ref = F.cross_entropy(x, t, reduction=reduction)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((loss * w).sum(), x)
    ref_grad, = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(2, 300), reduction=st.sampled_from(["mean", "sum", "none"]),
       n_ignored=st.integers(0, 5), chunk_rows=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_chunked_cross_entropy_of_bf16_logits_is_the_float32_loss_of_those_logits(n, c, reduction, n_ignored,
                                                                                   chunk_rows, seed):
    """CPU autocast's bfloat16 logits: each chunk is computed in float32, the loss comes back in float32 and
    the gradient in bfloat16: float32's gradient to bfloat16's precision (one rounding, 2**-8 relative)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g) * 4).bfloat16().requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    t[: min(n_ignored, n - 1)] = -100
    old = losses._CE_CHUNK_BYTES
    losses._CE_CHUNK_BYTES = chunk_rows * c * 4
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = losses._ChunkedCrossEntropy.apply(x, t, -100, reduction)
    finally:
        losses._CE_CHUNK_BYTES = old
    x32 = x.detach().float().requires_grad_()
    ref = F.cross_entropy(x32, t, reduction=reduction)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    w = torch.randn(ref.shape, generator=g)
    grad, = torch.autograd.grad((loss * w).sum(), x)
    ref_grad, = torch.autograd.grad((ref * w).sum(), x32)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), ref_grad, rtol=2**-8, atol=1e-7)


def test_cross_entropy_flat_takes_the_chunked_path_for_bf16_logits_under_autocast(small_pool):
    lin = torch.nn.Linear(16, 50)
    h = torch.randn(4, 30, 16)
    t = torch.randint(0, 50, (4, 30))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(h)
        loss = CrossEntropyLossFlat()(logits, t)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert type(loss.grad_fn).__name__ == "_ChunkedCrossEntropyBackward"
    loss.backward()
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32


def test_cross_entropy_flat_takes_the_chunked_path_for_large_cpu_logits(small_pool):
    x = torch.randn(4, 30, 50, requires_grad=True)  # 24 KB of logits
    t = torch.randint(0, 50, (4, 30))
    loss = CrossEntropyLossFlat()(x, t)
    assert type(loss.grad_fn).__name__ == "_ChunkedCrossEntropyBackward"
    ref = F.cross_entropy(x.view(-1, 50), t.view(-1))
    torch.testing.assert_close(loss, ref)
    grad, = torch.autograd.grad(loss, x)
    torch.testing.assert_close(grad, torch.autograd.grad(ref, x)[0])
    # class weights, label smoothing and probability targets keep torch's own loss
    for lf in (CrossEntropyLossFlat(weight=torch.ones(50)), CrossEntropyLossFlat(label_smoothing=0.1)):
        assert "Chunked" not in type(lf(x, t).grad_fn).__name__
    assert "Chunked" not in type(CrossEntropyLossFlat()(x, torch.softmax(x.detach(), -1)).grad_fn).__name__


def test_chunked_cross_entropy_names_an_out_of_range_target(small_pool):
    x, t = torch.randn(40, 50), torch.randint(0, 50, (40,))
    t[3] = 57
    with pytest.raises(IndexError, match="Target 57 is out of bounds"):
        CrossEntropyLossFlat()(x, t)


def test_pooled_linear_is_nn_linear_in_values_gradients_hooks_and_state(small_pool):
    torch.manual_seed(0)
    lin, ref = PooledLinear(8, 300), torch.nn.Linear(8, 300)
    ref.load_state_dict(lin.state_dict())
    assert list(lin.state_dict()) == list(ref.state_dict())
    seen = []
    lin.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(3, 7, 8, requires_grad=True)
    out, expected = lin(x), ref(x)
    assert seen == [torch.Size([3, 7, 300])] and _pooled(out)
    torch.testing.assert_close(out, expected)
    gy = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, lin.weight, lin.bias], gy)
    want = torch.autograd.grad(expected, [x, ref.weight, ref.bias], gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    out.mul_(2.0)  # in place, as users do on nn.Linear's output
    no_bias = PooledLinear(8, 300, bias=False)
    torch.testing.assert_close(no_bias(x), F.linear(x, no_bias.weight))


def test_predictions_of_earlier_batches_are_never_overwritten(small_pool):
    """The learner keeps `pred` across steps and get_preds keeps every batch's: pooled outputs must not
    share memory with anything still alive."""
    lin = PooledLinear(8, 300)
    kept = [lin(torch.full((2, 5, 8), float(i))).detach() for i in range(6)]  # more than max_buffers
    for i, p in enumerate(kept):
        torch.testing.assert_close(p, lin(torch.full((2, 5, 8), float(i))).detach())
    assert len({p.data_ptr() for p in kept}) == len(kept)


def test_a_language_model_fit_uses_the_pool_and_gives_its_buffers_back_at_the_end(small_pool):
    from rnnkit.data.text import TextDataLoaders
    from rnnkit.models.awd_lstm import AWDLSTMConfig
    from rnnkit.text.learner import language_model_learner
    from rnnkit.training.callback import Callback

    ids = np.random.default_rng(0).integers(0, 300, 6000)
    dls = TextDataLoaders.from_tensors(ids[:5000], ids[5000:], [f"w{i}" for i in range(300)], bs=8, seq_len=12)
    torch.manual_seed(0)
    learn = language_model_learner(dls, config=AWDLSTMConfig(emb_sz=8, n_hid=8, n_layers=1), metrics=[])

    class Watch(Callback):
        order = -100  # before AR/TAR add to the loss

        def after_loss(self):
            if not self.training:
                return
            self.pooled = _pooled(self.learn.pred)
            self.grad_fn = type(self.learn.loss_grad.grad_fn).__name__

    watch = Watch()
    learn.fit(1, 1e-3, cbs=watch)
    assert watch.pooled and watch.grad_fn.startswith("_ChunkedCrossEntropy")
    assert small_pool._buffers == []  # released at the end of fit
    assert np.isfinite(learn.recorder.values[-1][1])


def test_release_freed_memory_callback_releases_only_beyond_what_a_step_needs(monkeypatch):
    import rnnkit.callbacks.memory as cbmem
    from types import SimpleNamespace

    free, released = [0], []
    monkeypatch.setattr(cbmem, "heap_free_bytes", lambda: free[0])
    monkeypatch.setattr(cbmem, "release_freed_memory", lambda: released.append(free[0]) or True)
    cb = cbmem.ReleaseFreedMemory(warmup=3, slack=1.25)
    cb.learn = SimpleNamespace(training=True)
    cb.before_fit()
    for f in (100 * MB, 300 * MB, 200 * MB):  # warm-up: a step leaves up to 300 MB free
        free[0] = f
        cb.after_batch()
    assert released == [] and cb.limit == int(300 * MB * 1.25) + 32 * MB
    for f in (350 * MB, 400 * MB, 500 * MB, 320 * MB):
        free[0] = f
        cb.after_batch()
    assert released == [500 * MB]  # only what exceeds 375 + 32 MB
    cb.learn.training = False
    free[0] = 900 * MB
    cb.after_batch()  # validation batches are left alone...
    cb.after_validate()  # ...and everything is released after the pass
    assert released == [500 * MB, 900 * MB]


def test_release_freed_memory_callback_falls_back_to_every_n_batches(monkeypatch):
    import rnnkit.callbacks.memory as cbmem
    from types import SimpleNamespace

    released = []
    monkeypatch.setattr(cbmem, "heap_free_bytes", lambda: None)  # glibc < 2.33: cannot read the heap
    monkeypatch.setattr(cbmem, "release_freed_memory", lambda: released.append(1) or True)
    cb = cbmem.ReleaseFreedMemory(every=4)
    cb.learn = SimpleNamespace(training=True)
    cb.before_fit()
    for _ in range(10):
        cb.after_batch()
    assert len(released) == 2
    with pytest.raises(ValueError, match="slack >= 1"):
        cbmem.ReleaseFreedMemory(slack=0.5)


# The command line's learner (`run.build_learner`: AWD-LSTM, Adam, AR/TAR, random bptt, its callbacks)
# after its allocator setting, over a 40,000-word synthetic vocabulary: the logits and their gradient
# are 100-180 MB blocks of varying size each step, which made glibc's heap grow without bound under the
# setting the command line used before (issue 13). Resident memory is sampled after every step.
_FLAT_SCRIPT = """
import sys, tempfile
import numpy as np, torch
torch.set_num_threads(2)
from rnnkit.cli import _set_up_memory
_set_up_memory()  # the allocator setting of the rnnkit command line
from rnnkit.config import TrainConfig
from rnnkit.data.text import TextDataLoaders
from rnnkit.run import build_learner
from rnnkit.training.callback import Callback
from rnnkit.training.events import CancelFitException
V, steps = 40_000, int(sys.argv[1])
ids = np.random.default_rng(0).integers(0, V, 400_000)
dls = TextDataLoaders.from_tensors(ids[:360_000], ids[360_000:], [f"w{i}" for i in range(V)], bs=16,
                                   seq_len=60, random_bptt=True, seed=0)
cfg = TrainConfig(emb_sz=16, n_hid=32, n_layers=1, bs=16, bptt=60, random_bptt=True,
                  out=tempfile.mkdtemp()).validate()
torch.manual_seed(0)
learn = build_learner(cfg, dls)
class Sample(Callback):
    order = 100
    def before_fit(self): self.rss = []
    def after_batch(self):
        if not self.training: return
        with open("/proc/self/statm") as f: self.rss.append(int(f.read().split()[1]) * 4096)
        if len(self.rss) >= steps: raise CancelFitException
s = Sample(); learn.add_cb(s)
with learn.no_bar(), learn.no_logging(): learn.fit(100, 1e-3)
print(" ".join(str(r) for r in s.rss))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_memory_stays_flat_over_many_steps_with_a_large_vocabulary():
    steps, warmup = 80, 20
    out = subprocess.run([sys.executable, "-c", _FLAT_SCRIPT, str(steps)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = np.array([int(v) for v in out.stdout.split()]) / MB
    logits_mb = 16 * 60 * 40_000 * 4 / MB  # one logits-sized block at the base sequence length: 147 MB
    growth = rss[warmup:].max() - rss[warmup - 1]
    # Flat: after the warm-up, less than one logits-sized block more (a pooled buffer replaced by a larger
    # one for a longer batch is the most it may move). The old setting grew by several blocks here.
    assert growth < logits_mb, f"resident memory grew by {growth:.0f} MB after the warm-up: {rss.round()}"
