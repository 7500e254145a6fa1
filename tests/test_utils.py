"""Tests for rnnkit.utils: the fastai-style helpers."""

from __future__ import annotations

import copy
import io
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rnnkit.utils import (
    L,
    Module,
    camel2snake,
    class2attr,
    default_device,
    detuplify,
    find_bs,
    noop,
    range_of,
    snake_case,
    tensor,
    to_device,
)


class _Subclassed(torch.Tensor):
    pass


def test_tensor_accepts_varargs_lists_and_numbers():
    assert torch.equal(tensor(4, 5, 6), torch.tensor([4, 5, 6]))
    assert torch.equal(tensor([1, 2]), torch.tensor([1, 2]))
    assert tensor(3).ndim == 0 and tensor(3).item() == 3
    assert torch.equal(tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [3, 4]]))


def test_tensor_always_returns_a_plain_tensor():
    sub = torch.zeros(3).as_subclass(_Subclassed)
    for value in ([1, 2], 5, np.arange(3), L(1, 2), sub, [sub, sub], range(4)):
        assert type(tensor(value)) is torch.Tensor


def test_tensor_stacks_a_list_of_tensors():
    res = tensor([torch.tensor([1, 2]), torch.tensor([3, 4])])
    assert torch.equal(res, torch.tensor([[1, 2], [3, 4]]))
    assert torch.equal(tensor([torch.tensor(1), torch.tensor(2)]), torch.tensor([1, 2]))


def test_tensor_converts_fastcore_l_and_numpy():
    nums = L(range(10))
    assert torch.equal(tensor(nums[2:5]), torch.tensor([2, 3, 4]))
    assert tensor(nums[2:5]).dtype == torch.int64
    assert tensor(np.array([1.0, 2.0])).dtype == torch.float32  # float64 becomes float32, as in fastai


def test_tensor_keeps_an_explicit_dtype():
    assert tensor([1.0], dtype=torch.float64).dtype == torch.float64
    assert tensor([1, 2], dtype=torch.float32).dtype == torch.float32


def test_tensor_rejects_unconvertible_objects():
    with pytest.raises(TypeError, match="cannot convert"):
        tensor(object())


def test_l_has_fastcore_semantics():
    xs = L.range(5)
    assert list(xs) == [0, 1, 2, 3, 4]
    assert list(xs.map(lambda o: o * 2)) == [0, 2, 4, 6, 8]
    assert list(xs.filter(lambda o: o % 2)) == [1, 3]
    assert list(L(1, 2, 1, 3).unique()) == [1, 2, 3]
    assert list(L([(1, "a"), (2, "b")]).itemgot(1)) == ["a", "b"]
    assert list(xs[[0, 2]]) == [0, 2]
    assert isinstance(xs[1:3], L) and list(xs[1:3]) == [1, 2]


def test_range_of_gives_indices_of_a_collection_or_a_range():
    assert range_of([7, 8, 9]) == [0, 1, 2]
    assert range_of(3) == [0, 1, 2]
    assert range_of(1, 4) == [1, 2, 3]
    assert range_of(0, 10, 4) == [0, 4, 8]


def test_noop_returns_its_first_argument():
    assert noop() is None
    assert noop(3, 4, a=5) == 3


class _Net(Module):
    def __init__(self, n_in: int, n_out: int):
        self.lin = nn.Linear(n_in, n_out)
        self.h = 0

    def forward(self, x):
        return self.lin(x)


class _Deeper(_Net):
    def __init__(self):
        super().__init__(3, 2)
        self.extra = nn.Linear(2, 2)


class _SetsBeforeSuper(_Net):
    def __init__(self):
        self.first = nn.Linear(1, 1)
        super().__init__(3, 2)


def test_module_subclass_without_super_init_registers_parameters():
    net = _Net(3, 2)
    assert [k for k, _ in net.named_parameters()] == ["lin.weight", "lin.bias"]
    assert net(torch.randn(4, 3)).shape == (4, 2)


def test_module_subclass_calling_super_init_keeps_earlier_attributes():
    assert [k for k, _ in _Deeper().named_parameters()] == ["lin.weight", "lin.bias", "extra.weight", "extra.bias"]
    names = [k for k, _ in _SetsBeforeSuper().named_parameters()]
    assert names == ["first.weight", "first.bias", "lin.weight", "lin.bias"]


def test_module_subclass_keeps_its_init_signature():
    import inspect

    assert list(inspect.signature(_Net.__init__).parameters) == ["self", "n_in", "n_out"]


def test_module_deepcopies_and_pickles():
    net = _Net(3, 2)
    clone = copy.deepcopy(net)
    assert type(clone) is _Net
    assert clone.lin.weight.data_ptr() != net.lin.weight.data_ptr()
    assert torch.equal(clone.lin.weight, net.lin.weight)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    fresh = _Net(3, 2)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.lin.weight, net.lin.weight)
    assert torch.equal(pickle.loads(pickle.dumps(net)).lin.bias, net.lin.bias)


def test_module_runs_under_torch_compile():
    net = _Net(3, 2)
    x = torch.randn(4, 3)
    compiled = torch.compile(net, backend="eager")
    assert torch.allclose(compiled(x), net(x))


def test_find_bs_reads_the_first_tensor_in_a_nested_batch():
    assert find_bs((torch.zeros(5, 2), torch.zeros(5))) == 5
    assert find_bs([[torch.zeros(7)], torch.zeros(3)]) == 7
    assert find_bs({"x": torch.zeros(4, 1)}) == 4
    with pytest.raises(ValueError, match="no tensor"):
        find_bs(("a", 1))


def test_to_device_recurses_and_keeps_container_types():
    b = (torch.zeros(2), [torch.ones(1), {"k": torch.zeros(1)}], 3)
    res = to_device(b, "cpu")
    assert isinstance(res, tuple) and isinstance(res[1], list) and isinstance(res[1][1], dict)
    assert res[0].device.type == "cpu" and res[2] == 3


def test_default_device_is_the_best_available_unless_rnnkit_device_says(monkeypatch):
    monkeypatch.setenv("RNNKIT_DEVICE", "auto")
    best = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert default_device().type == best
    monkeypatch.setenv("RNNKIT_DEVICE", "meta")  # any torch device name is taken as given
    assert default_device() == torch.device("meta")
    monkeypatch.setenv("RNNKIT_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="RNNKIT_DEVICE='gpu0' is not a device"):
        default_device()


def test_detuplify_unwraps_single_element_tuples():
    assert detuplify((3,)) == 3
    assert detuplify([3]) == 3
    assert detuplify((1, 2)) == (1, 2)
    assert detuplify(()) is None
    assert detuplify(5) == 5


def test_camel2snake_and_class2attr_follow_fastai_naming():
    assert camel2snake("TrainEvalCallback") == "train_eval_callback"
    assert snake_case("RNNCallback") == "rnn_callback"

    class TrainEvalCallback:
        pass

    class RNNCallback:
        pass

    class Recorder:
        pass

    class Callback:
        pass

    assert class2attr(TrainEvalCallback(), "Callback") == "train_eval"
    assert class2attr(RNNCallback(), "Callback") == "rnn"
    assert class2attr(Recorder(), "Callback") == "recorder"
    assert class2attr(Callback(), "Callback") == "callback"
    assert class2attr(TrainEvalCallback, "Callback") == "train_eval"


_FAULTS_SCRIPT = """
import resource, sys, torch
from rnnkit.utils import release_freed_memory, reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else None
release_freed_memory()  # the heap's top starts small, whatever importing torch left there
def faults(mb, n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(mb * 1024 * 1024 // 4).fill_(1.0) for _ in range(n)]
    del blocks  # all freed again at once, as a training step's activations are
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def steady(mb, n):  # the steady state of a training loop, after the heap has grown to hold the blocks
    for _ in range(3):
        faults(mb, n)
    return max(faults(mb, n) for _ in range(4))
large = steady(64, 1)  # first, while the heap's top holds no 64 MiB free (glibc serves any size from there)
print(applied, steady(24, 3), large)
"""


_RELEASE_SCRIPT = """
import torch
from rnnkit.utils import heap_free_bytes, release_freed_memory, reuse_freed_memory
reuse_freed_memory()  # 1 MiB blocks from the heap
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
keep = [torch.ones(256 * 1024) for _ in range(64)]  # 64 x 1 MiB, touched
del keep[::2]  # 32 MiB of holes that the heap keeps
free, before = heap_free_bytes(), rss()
print(free is not None, (free or 0) >> 20, release_freed_memory(), (before - rss()) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_heap_free_bytes_sees_freed_memory_and_release_freed_memory_returns_it():
    import subprocess

    out = subprocess.run([sys.executable, "-c", _RELEASE_SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    free_mb, released, rss_drop_mb = int(out[1]), out[2], int(out[3])
    assert free_mb >= 30 and released == "True"
    assert rss_drop_mb >= 24  # the holes' pages went back to the system


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_reuse_freed_memory_keeps_step_sized_blocks_and_never_large_ones():
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, "on"], capture_output=True, text=True,
                         check=True).stdout.split()
    if out[0] != "True":
        pytest.skip("not glibc: mallopt had no effect")
    faults_24mb_x3, faults_64mb = int(out[1]), int(out[2])
    # Three 24 MiB blocks freed together are 72 MiB at the heap's top: glibc's default trims that back to
    # the system (12,288 page faults to map them again, in most runs); the setting keeps it for reuse.
    assert faults_24mb_x3 < 3 * 24 * 256 // 20
    # A block over 32 MiB never makes the heap grow (issue 13): unless the heap's top already has room
    # for it, it is mapped afresh, every page faulting again. (Measured before the 24 MiB blocks leave
    # 72 MiB free at the top, which glibc would serve it from: CI once saw 0 faults that way.)
    assert faults_64mb > 64 * 256 // 2


def test_reuse_freed_memory_is_a_no_op_off_linux(monkeypatch):
    import ctypes

    import rnnkit.memory as memory

    def no_libc(*a, **k):
        raise AssertionError("must not load the C library off Linux")

    monkeypatch.setattr(memory.sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    memory._glibc.cache_clear()  # looked up once per process
    try:
        assert memory.reuse_freed_memory() is False
        assert memory.release_freed_memory() is False and memory.heap_free_bytes() is None
    finally:
        memory._glibc.cache_clear()


def test_resolve_device_checks_the_device_exists(monkeypatch):
    from rnnkit.utils import describe_device, resolve_device

    monkeypatch.setenv("RNNKIT_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert describe_device(torch.device("cpu")).startswith("cpu (")
    with pytest.raises(ValueError, match="is not a device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="rnnkit trains on cpu, cuda or mps"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available.*--device cpu"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_atomic_write_takes_text_bytes_or_a_writer_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    from rnnkit.utils import atomic_write

    target = tmp_path / "sub" / "f.bin"
    atomic_write(target, "text")
    assert target.read_text() == "text"
    atomic_write(target, lambda f: torch.save({"w": torch.ones(2)}, f))
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    before = target.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == before and [p.name for p in target.parent.iterdir()] == ["f.bin"]
