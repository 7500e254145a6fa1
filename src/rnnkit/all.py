"""`from rnnkit.all import *`: every public name, fastai-style, for notebooks and the seeds' code.

Re-exports only: no logic lives here, and nothing inside the package imports this module.
"""
# ruff: noqa: F401, F403
# fastcore's names come first, as in fastai (`store_attr`, `patch`, `delegates`, `Self`, `test_eq` ...,
# which fastai users' callbacks and tests use); rnnkit's own names below take precedence.
from fastcore.all import *

# The standard-library names fastai's star import brings (fastai.imports), which fastai code uses bare.
import collections, contextlib, functools, inspect, io, itertools, json, math, operator, os, random, re, shutil
import sys, tempfile, time, types, warnings
from collections import Counter, OrderedDict, defaultdict, namedtuple
from contextlib import contextmanager, redirect_stdout
from copy import copy, deepcopy
from functools import partial, reduce
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from rnnkit.callbacks import *
from rnnkit.data import *
from rnnkit.losses import *
from rnnkit.metrics import *
from rnnkit.optim import *
from rnnkit.schedules import *
from rnnkit.training.callback import CastToTensor, Callback, TrainEvalCallback
from rnnkit.training.events import *
from rnnkit.training.learner import Learner, before_batch_cb, norm_bias_params, trainable_params
from rnnkit.checkpoint import load_model, load_model_state, restore_checkpoint, save_model
from rnnkit.distributed import *
from rnnkit.training.recorder import Recorder
from rnnkit.utils import *
from rnnkit.torch_core import *
from rnnkit.models import *
from rnnkit.text.learner import LMLearner, TextLearner, awd_lstm_lm_split, language_model_learner
from rnnkit.text.cache_pointer import CacheConfig
from rnnkit.text.dynamic_eval import DynamicEvalConfig
from rnnkit.text.lm_eval import tune_cache
from rnnkit.config import TrainConfig, resolve_config
from rnnkit.finetune import finetune
from rnnkit.errors import MissingFileError, UserError
from rnnkit.export import ExportError, export_learner, load_learner
from rnnkit.test_utils import RegModel, VerboseCallback, equals, synth_dbunch, synth_learner, test_eq, test_ne
