"""tinygen: offline text generation from small causal LMs through onnxruntime, no torch."""

from .config import GenerationConfig
from .decoding import Completion
from .errors import ModelFormatError, TinygenError
from .generator import TextGenerator, TextStream

__version__ = "0.1.0"
__all__ = ["TextGenerator", "TextStream", "GenerationConfig", "Completion", "TinygenError",
           "ModelFormatError"]
