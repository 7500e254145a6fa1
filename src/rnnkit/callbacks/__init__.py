"""Callbacks shipped with rnnkit."""
from rnnkit.callbacks.best import SaveBestWeights
from rnnkit.callbacks.budget import TimeBudget
from rnnkit.callbacks.clip import GradientClip
from rnnkit.callbacks.csv_logger import CSVLogger
from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.callbacks.graph import ShowGraphCallback
from rnnkit.callbacks.hook import (
    ActivationStats, Hook, HookCallback, Hooks, has_params, hook_output, hook_outputs,
)
from rnnkit.callbacks.ntasgd import NTASGD, NonMonotoneStop
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.callbacks.preds import FetchPredsCallback, GatherPredsCallback
from rnnkit.callbacks.progress import ProgressCallback
from rnnkit.callbacks.throughput import Throughput
from rnnkit.callbacks.rnn import ModelReseter, ModelResetter, RNNCallback, RNNRegularizer, RNNTrainer, rnn_cbs
from rnnkit.callbacks.schedule import LRFinder, ParamScheduler, SkipToEpoch, SuggestedLRs
from rnnkit.callbacks.tensorboard import TensorBoardBaseCallback, TensorBoardCallback, projector_word_embeddings
from rnnkit.callbacks.tracker import (
    EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback, TerminateOnNaNCallback, TrackerCallback,
)
from rnnkit.callbacks.training import BnFreeze, GradientAccumulation, ShortEpochCallback, bn_types, set_bn_eval

__all__ = [
    "NTASGD", "NonMonotoneStop", "SaveBestWeights", "TimeBudget", "Checkpointer", "GradientClip", "CSVLogger", "MixedPrecision", "GatherPredsCallback",
    "FetchPredsCallback", "ProgressCallback", "Throughput",
    "ModelResetter", "ModelReseter", "RNNCallback", "RNNRegularizer", "RNNTrainer", "rnn_cbs",
    "LRFinder", "ParamScheduler", "SkipToEpoch", "SuggestedLRs",
    "EarlyStoppingCallback", "SaveModelCallback", "TerminateOnNaNCallback", "TrackerCallback",
    "ReduceLROnPlateau", "GradientAccumulation", "ShowGraphCallback",
    "ShortEpochCallback", "bn_types", "set_bn_eval", "BnFreeze",
    "Hook", "hook_output", "Hooks", "hook_outputs", "has_params", "HookCallback", "ActivationStats",
    "TensorBoardBaseCallback", "TensorBoardCallback", "projector_word_embeddings",
]
