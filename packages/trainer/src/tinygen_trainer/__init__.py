"""tinygen-trainer: token datasets, tokenizers, training, distillation and export.

Everything here may use torch and transformers; the runtime (`tinygen`) never does.
"""

__version__ = "0.1.0"
