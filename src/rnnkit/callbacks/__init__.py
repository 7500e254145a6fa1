"""Callbacks shipped with rnnkit."""
from rnnkit.callbacks.clip import GradientClip
from rnnkit.callbacks.csv_logger import CSVLogger
from rnnkit.callbacks.fp16 import MixedPrecision
from rnnkit.callbacks.ntasgd import NTASGD
from rnnkit.callbacks.checkpoint import Checkpointer
from rnnkit.callbacks.preds import GatherPredsCallback
from rnnkit.callbacks.progress import ProgressCallback
from rnnkit.callbacks.rnn import ModelReseter, ModelResetter, RNNCallback, RNNRegularizer, RNNTrainer, rnn_cbs
from rnnkit.callbacks.schedule import LRFinder, ParamScheduler, SkipToEpoch, SuggestedLRs
from rnnkit.callbacks.tracker import (
    EarlyStoppingCallback, SaveModelCallback, TerminateOnNaNCallback, TrackerCallback,
)

__all__ = ["NTASGD", "Checkpointer", 
    "GradientClip", "CSVLogger", "MixedPrecision", "GatherPredsCallback", "ProgressCallback",
    "ModelResetter", "ModelReseter", "RNNCallback", "RNNRegularizer", "RNNTrainer", "rnn_cbs", "LRFinder", "ParamScheduler", "SkipToEpoch", "SuggestedLRs",
    "EarlyStoppingCallback", "SaveModelCallback", "TerminateOnNaNCallback", "TrackerCallback",
]
