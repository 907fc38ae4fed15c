from .blocks import Block, FeedForward  # noqa: F401
from .config import DecoderConfig, EncoderConfig  # noqa: F401
from .decoder import AdaptiveLogSoftmax, DecoderState, FMMDecoderLM  # noqa: F401
from .embeddings import TokenPositionEmbedding  # noqa: F401
from .encoder import FMMEncoder  # noqa: F401
from .heads import DualEncoderRetrieval, SequenceClassifier  # noqa: F401
