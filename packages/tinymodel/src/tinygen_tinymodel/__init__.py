"""The embedded tiny model: an exported tinygen model directory shipped as package data, a
4-layer student distilled from SmolLM2-135M-Instruct (tools/tinymodel/build.py).

It has no code of its own to run; `tinygen.TextGenerator()` with no model finds it here.
Its model card, with the recipe, data, perplexity and licences, is model/MODEL_CARD.md.
"""

from pathlib import Path

__version__ = "0.1.0"


def model_dir() -> Path:
    return Path(__file__).parent / "model"
