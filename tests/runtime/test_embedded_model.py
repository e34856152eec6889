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


def _table(card: str, heading: str) -> dict[str, float]:
    """The rows of the markdown table that follows `heading` in the card: label -> value."""
    rows, started = {}, False
    for line in card[card.index(heading):].splitlines()[1:]:
        if line.startswith("| ") and not line.startswith("| model"):
            label, value = [c.strip(" *") for c in line.strip("|").split("|")]
            rows[label] = float(value)
            started = True
        elif started and not line.startswith("|"):
            break
    return rows


def test_model_card_shows_distillation_beating_the_plain_student():
    folder = model_dir()
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    ppl = _table(card, "## Held-out perplexity")
    teacher = ppl["teacher, SmolLM2-135M-Instruct (fp32)"]
    shipped = ppl["distilled student, int8 (shipped)"]
    plain = ppl["plain student (no teacher), int8"]
    assert teacher < shipped < 0.9 * plain  # clearly, not by a rounding
    bpc = _table(card, "Bits per character")
    assert bpc["distilled student, int8 (shipped)"] < bpc["plain student (no teacher), int8"]
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name != "MODEL_CARD.md") / 1e6
    assert f"{size:.1f} MB on disk" in card
    for prompt in ("Once upon a time", "To be, or not to be", "And God said"):
        assert "```\n" + prompt in card
    assert "Apache-2.0" in card and load_manifest(folder).architecture == "llama"


def test_embedded_model_never_generates_markers_it_never_saw():
    gen = TextGenerator()
    vocab = {gen.tokenizer.token_text(i): i for i in range(17)}  # SmolLM2's special tokens
    assert vocab["<|im_start|>"] in gen.tokenizer.banned_ids
    assert vocab["<filename>"] in gen.tokenizer.banned_ids
    assert not {vocab["<|endoftext|>"], vocab["<|im_end|>"]} & set(gen.tokenizer.banned_ids)
