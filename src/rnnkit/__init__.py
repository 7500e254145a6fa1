"""rnnkit: train recurrent language models the fastai way, on plain PyTorch."""
from rnnkit.training.callback import Callback
from rnnkit.training.events import event
from rnnkit.training.learner import Learner
from rnnkit.training.recorder import Recorder

__version__ = "0.1.0"
__all__ = ["Callback", "event", "Learner", "Recorder", "__version__"]
