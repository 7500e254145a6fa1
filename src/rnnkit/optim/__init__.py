"""Optimizers built from stepper functions, their recipes, and a wrapper for `torch.optim`."""
from __future__ import annotations

from rnnkit.optim.lookahead import Lookahead, ranger
from rnnkit.optim.more import (Lamb, Larc, QHAdam, RAdam, lamb_step, larc_layer_lr, larc_step,
                               qhadam_step, radam_step)
from rnnkit.optim.optimizer import OptimWrapper, Optimizer, detuplify_pg, pytorch_hp_map, set_item_pg
from rnnkit.optim.recipes import SGD, Adam, RMSProp
from rnnkit.optim.steppers import (adam_step, average_grad, average_sqr_grad, debias, foreach_of,
                                   l2_reg, momentum_step, rms_prop_step, sgd_step, step_stat,
                                   stepper, weight_decay)

__all__ = [
    "Optimizer", "OptimWrapper", "detuplify_pg", "set_item_pg", "pytorch_hp_map",
    "SGD", "RMSProp", "Adam", "RAdam", "QHAdam", "Lamb", "Larc", "Lookahead", "ranger",
    "stepper", "foreach_of", "sgd_step", "weight_decay", "l2_reg", "average_grad",
    "average_sqr_grad", "momentum_step", "rms_prop_step", "step_stat", "debias", "adam_step",
    "radam_step", "qhadam_step", "lamb_step", "larc_layer_lr", "larc_step",
]
