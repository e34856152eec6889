"""tinygen: offline text generation from small causal LMs through onnxruntime, no torch.

The names below load on first use, so `tinygen.cli` starts (and answers Ctrl-C) before
numpy and onnxruntime are imported.
"""

from importlib import import_module

__version__ = "0.1.0"
_MODULES = {"TextGenerator": "generator", "TextStream": "generator", "GenerationConfig": "config",
            "Completion": "decoding", "TinygenError": "errors", "ModelFormatError": "errors",
            "PromptTooLong": "errors",
            "AsyncTextStream": "async_api"}
__all__ = list(_MODULES)


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module 'tinygen' has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
