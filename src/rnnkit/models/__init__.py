"""Models: the book's language models and recurrent cells written from scratch."""
from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7
from rnnkit.models.cells import GRUCell, GRULayer, LSTMCell, LSTMCellGates, LSTMLayer, RNNLayer, StackedRNN

__all__ = ["LMModel1", "LMModel2", "LMModel3", "LMModel4", "LMModel5", "LMModel6", "LMModel7"]
__all__ += ["GRUCell", "GRULayer", "LSTMCell", "LSTMCellGates", "LSTMLayer", "RNNLayer", "StackedRNN"]
