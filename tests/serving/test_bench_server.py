"""tools/bench/bench_server.py runs, bounded, and reports every request as completed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench" / "bench_server.py"


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args, "--json", "--startup-timeout", "60",
                           "--request-timeout", "30", "--stall", "10"],
                          capture_output=True, text=True, timeout=120)


def test_load_test_completes_every_request(optimum_gpt2_dir):
    result = run_tool("--model", str(optimum_gpt2_dir), "--clients", "4", "--duration", "2", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    [run] = json.loads(result.stdout)["runs"].values()
    assert run["requests"] > 4 and run["completed"] == run["requests"]
    assert run["hung"] == 0 and run["errors"] == {}
    assert run["tokens_per_s"] > 0 and run["latency_p99_s"] >= run["latency_p50_s"] > 0


def test_compare_sends_the_same_requests_both_ways(optimum_gpt2_dir):
    result = run_tool("--model", str(optimum_gpt2_dir), "--compare", "4", "--max-tokens", "8")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["same_texts"] is True and report["speedup"] > 0
    assert report["server_stats"]["most_requests_in_a_step"] > 1
