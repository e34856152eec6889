"""tinygen: offline text generation from small causal LMs through onnxruntime, no torch.

The names below load on first use, so `tinygen.cli` starts (and answers Ctrl-C) before
numpy and onnxruntime are imported.
"""

from .lazy_names import lazy_names

__version__ = "0.1.0"
_MODULES = {"TextGenerator": "generator", "TextStream": "generator", "GenerationConfig": "config",
            "Completion": "decoding", "TinygenError": "errors", "ModelFormatError": "errors",
            "PromptTooLong": "errors",
            "AsyncTextStream": "async_api"}
__all__ = list(_MODULES)
__getattr__, __dir__ = lazy_names(__name__, _MODULES, globals())
