"""tools/bench/bench_kv_attention.py builds and times every KV buffer kind it reports, and
its standard-op form of attention computes what GroupQueryAttention does."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "bench" / "bench_kv_attention.py"


def test_it_prints_one_row_per_kind_with_the_cost_added():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--layers", "2", "--heads", "4", "--kv-heads", "2",
         "--head-size", "16", "--capacity", "64", "--positions", "4", "60", "--rounds", "1",
         "--steps", "2", "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "ms" not in line
            and "KV buffers" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("float32", "-"), ("8-bit", "channel"), ("4-bit", "channel"), ("8-bit", "tensor"), ("4-bit", "tensor"),
        ("float32", "MatMul form")]
    for row in rows:
        near, far, added = (float(x) for x in row[2:])
        assert near > 0 and far > 0 and abs(far - near - added) < 0.011
    difference = float(out.rsplit("largest difference", 1)[1])
    assert difference < 1e-5
