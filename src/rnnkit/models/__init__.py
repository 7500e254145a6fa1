"""Models: the book's language models and recurrent cells written from scratch."""
from rnnkit.models.book import LMModel1, LMModel2, LMModel3, LMModel4, LMModel5, LMModel6, LMModel7
from rnnkit.models.cells import GRUCell, GRULayer, LSTMCell, LSTMCellGates, LSTMLayer, RNNLayer, StackedRNN

__all__ = ["LMModel1", "LMModel2", "LMModel3", "LMModel4", "LMModel5", "LMModel6", "LMModel7"]
__all__ += ["GRUCell", "GRULayer", "LSTMCell", "LSTMCellGates", "LSTMLayer", "RNNLayer", "StackedRNN"]
from rnnkit.models.awd_lstm import (  # noqa: E402
    AWD_LSTM,
    AWD_LSTM_CONFIGS,
    AWDLSTMConfig,
    LinearDecoder,
    SequentialRNN,
    awd_lstm_clas_config,
    awd_lstm_lm_config,
    get_language_model,
)
from rnnkit.models.dropout import EmbeddingDropout, RNNDropout, WeightDropout, dropout_mask  # noqa: E402

__all__ += ["dropout_mask", "RNNDropout", "EmbeddingDropout", "WeightDropout"]
__all__ += ["AWD_LSTM", "AWDLSTMConfig", "AWD_LSTM_CONFIGS", "awd_lstm_lm_config", "awd_lstm_clas_config",
            "LinearDecoder", "SequentialRNN", "get_language_model"]
