"""tools/bench/models.py: a cached benchmark model is rebuilt when the exporter's recipe changed."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"
sys.path.insert(0, str(BENCH))
import models  # noqa: E402


def test_a_fused_build_from_an_older_exporter_is_redone(tiny_gpt2_dir, tmp_path):
    out = models.build_fused(tiny_gpt2_dir, tmp_path / "fused-int8", quantize="int8")
    assert (out / ".complete").read_text() == models.export_recipe()
    (out / "kept").touch()
    assert models.build_fused(tiny_gpt2_dir, out, quantize="int8") == out
    assert (out / "kept").exists()  # same recipe: reused as it is

    (out / ".complete").write_text("a digest of the exporter before a quantizer change")
    models.build_fused(tiny_gpt2_dir, out, quantize="int8")
    assert not (out / "kept").exists()  # exported again
    assert (out / ".complete").read_text() == models.export_recipe()
