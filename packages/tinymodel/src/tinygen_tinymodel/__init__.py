"""The embedded tiny model: an exported tinygen model directory shipped as package data.

It has no code of its own to run; `tinygen.TextGenerator()` with no model finds it here.
Built by tools/build_tinymodel.py; its model card is model/MODEL_CARD.md.
"""

from pathlib import Path

__version__ = "0.1.0"


def model_dir() -> Path:
    return Path(__file__).parent / "model"
