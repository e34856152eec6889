"""The embedded tiny model as shipped in packages/tinymodel: it loads, generates reproducibly and
fits its size budget."""

from __future__ import annotations

from tinygen import TextGenerator
from tinygen.manifest import load_manifest
from tinygen_tinymodel import model_dir

MAX_MB = 30


def test_embedded_model_is_the_default_and_reproducible():
    first = TextGenerator().generate("Once upon a time", seed=3, max_new_tokens=24)[0]
    again = TextGenerator(model_dir()).generate("Once upon a time", seed=3, max_new_tokens=24)[0]
    assert str(first) and first == again and first.seed == 3
    assert len(first.token_ids) == 24 or first.finish_reason == "stop"


def test_embedded_model_fits_its_budget():
    folder = model_dir()
    manifest = load_manifest(folder)
    assert manifest.quantization == "int8"
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
    assert size <= MAX_MB, f"{size:.1f} MB"
