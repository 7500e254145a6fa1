"""fastai's torch_core helpers that fastai code calls (to_detach, to_np, find_device, no_random ...)."""
from __future__ import annotations

import contextlib
import random
from collections import namedtuple

import numpy as np
import torch
from torch import nn

from rnnkit.torch_core import (
    apply, find_device, item_find, no_random, one_param, params, replacing_yield, set_seed, to_cpu, to_detach, to_np,
)


def test_to_detach_and_to_np_keep_the_structure():
    t = torch.ones(2, requires_grad=True) * 3
    Pair = namedtuple("Pair", "a b")
    out = to_detach({"x": [t, (t,)], "p": Pair(t, 1)})
    assert not out["x"][0].requires_grad and not out["x"][1][0].requires_grad
    assert isinstance(out["p"], Pair) and out["p"].b == 1
    arr = to_np([t])
    assert isinstance(arr[0], np.ndarray) and arr[0].tolist() == [3.0, 3.0]
    assert to_cpu((t,))[0].device.type == "cpu"
    assert apply(lambda x: x * 2, [1, (2, 3)]) == [2, (4, 6)]


def test_find_device_one_param_and_params():
    m = nn.Linear(2, 3)
    assert find_device(({"a": torch.zeros(1)}, 5)) == torch.device("cpu")
    assert item_find([[7, 8], 9]) == 7
    assert one_param(m) is m.weight and params(m) == [m.weight, m.bias]


def test_no_random_seeds_a_block_and_restores_the_generators():
    set_seed(1)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_seed(1)
    with no_random(seed=5):
        a = float(torch.rand(1))
    with no_random(seed=5):
        b = float(torch.rand(1))
    assert a == b
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected  # as if no block ran


def test_replacing_yield_puts_the_value_back_even_on_error():
    class Holder:
        x = 1

        @contextlib.contextmanager
        def x_changed(self, v):  # fastai's pattern: a context manager that returns the generator
            return replacing_yield(self, "x", v)

    o = Holder()
    try:
        with o.x_changed(2):
            assert o.x == 2
            raise RuntimeError
    except RuntimeError:
        pass
    assert o.x == 1
