"""tools/bench/compare.py's own arithmetic and its tinygen worker, on a tiny fused export."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402


def test_the_tinygen_worker_notes_when_each_token_is_ready(exported_llama_dir):
    """Its loop is generate's: the same greedy tokens, and one timestamp per token."""
    from tinygen import TextGenerator

    prompt, new = [5, 17, 42, 9], 6
    worker = subprocess.Popen(
        [sys.executable, str(BENCH / "peers" / "tinygen_engine.py"), "--model",
         str(exported_llama_dir), "--threads", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def ask(ids):
        worker.stdin.write(json.dumps({"op": "generate", "prompt": ids, "batch": 2,
                                       "new_tokens": new}) + "\n")
        worker.stdin.flush()
        return json.loads(worker.stdout.readline())

    try:
        assert json.loads(worker.stdout.readline())["ready"]
        answer = ask(prompt)
        # as generate does, an id outside the vocabulary is refused (and the worker goes on)
        assert "outside the vocabulary" in ask([5, 999_999_999])["error"]
        assert ask(prompt)["tokens"] == answer["tokens"]
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    expected = TextGenerator(exported_llama_dir, device="cpu").generate(
        prompt, do_sample=False, max_new_tokens=new, stop_at_eos=False)[0].token_ids
    assert answer["lengths"] == [new, new]
    assert answer["tokens"] == list(expected)
    ready = answer["token_at"]
    assert len(ready) == new and ready == sorted(ready)
    assert 0 < ready[0] and ready[-1] <= answer["seconds"]


def _row(model: Path, at_32: float, at_1000: float) -> "compare.RowResult":
    r = compare.RowResult(compare.Row("tinygen", "fp32", model.parent, model))
    r.ms_per_token = {32: at_32, 1000: at_1000}
    return r


def test_the_position_goal_and_its_bandwidth_floor(exported_llama_dir):
    model = exported_llama_dir / "model.onnx"
    graph = onnx.load(str(model), load_external_data=False).graph
    [key] = [i for i in graph.input if i.name == "past_key_values.0.key"]
    heads, head_size = (key.type.tensor_type.shape.dim[i].dim_value for i in (1, 3))
    layers = sum(i.name.startswith("past_key_values") for i in graph.input) // 2
    assert layers > 0 and heads * head_size > 0
    kv = compare.kv_bytes_per_position(model)
    assert kv == layers * 2 * heads * head_size * 4  # float32 keys and values

    weights = compare.weight_bytes_per_token(model)
    floor = (weights + 1000 * kv) / (weights + 32 * kv)
    met, missed = compare._position_goals("tiny", {"a": _row(model, 10.0, 11.9),
                                                   "b": _row(model, 10.0, 12.1)})
    assert met.endswith("| yes |") and "= 1.19x" in met
    assert missed.endswith("| no |") and "= 1.21x" in missed
    assert f"(bandwidth floor {floor:.2f}x)" in met


@pytest.mark.parametrize("engine", ["ort-genai", "llama.cpp"])
def test_the_position_goal_is_only_ours(exported_llama_dir, engine):
    r = _row(exported_llama_dir / "model.onnx", 10.0, 11.0)
    r.row = compare.Row(engine, "int4", exported_llama_dir, None)
    assert compare._position_goals("tiny", {"x": r}) == []


@pytest.mark.parametrize("flags, says, leaves_out", [
    ([], ["ms/token at 1000", "median of 3 fresh processes"], []),
    (["--cases", "decode", "--cold-runs", "0"], [], ["ms/token at 1000", "fresh processes"]),
])
def test_the_settings_line_describes_only_what_ran(flags, says, leaves_out):
    args = compare.build_parser().parse_args(flags)
    [settings] = [line for line in compare.report([], {}, args, None, 60.0, 0.5).splitlines()
                  if line.startswith("- settings: ")]
    assert "medians of 5 rounds" in settings
    assert all(s in settings for s in says) and not any(s in settings for s in leaves_out)


def test_half_the_rounds_run_on_workers_started_in_the_reverse_order(tmp_path):
    rows = [compare.Row(engine, precision, tmp_path)
            for engine in ("tinygen", "ort-genai") for precision in ("fp32", "int4")]
    (first, first_rounds), (second, second_rounds) = compare.halves(rows, 15)
    assert [r.label for r in first] == ["tinygen fp32", "ort-genai fp32", "tinygen int4",
                                        "ort-genai int4"]
    assert second == first[::-1] and (first_rounds, second_rounds) == (8, 7)
    # one round, or one worker, has no second half to run
    assert [n for _, n in compare.halves(rows, 1)] == [1]
    assert [n for _, n in compare.halves(rows[:1], 15)] == [15]


def test_a_row_s_figures_pool_the_rounds_of_both_start_orders():
    first = compare.Timing(t_1=[1.0, 1.0], t_n=[3.0, 3.0], steps=[0.02, 0.02],
                           tokens=[1, 2], near=compare.Timing(steps=[0.01]))
    second = compare.Timing(t_1=[1.0], t_n=[5.0], steps=[0.04], tokens=[1, 2],
                            near=compare.Timing(steps=[0.03, 0.03]))
    first.extend(second)
    assert first.t_n == [3.0, 3.0, 5.0] and first.near.steps == [0.01, 0.03, 0.03]
    result = compare.RowResult(compare.Row("tinygen", "fp32", Path(".")))
    compare._record(compare.Case("b1", 32, 1, 3), first, result)
    assert result.decode[1] == pytest.approx(2 / (3.0 - 1.0))  # medians over all three rounds
    compare._record(compare.Case("pos1000", 1000, 1, 3, near_prompt_len=32), first, result)
    assert result.ms_per_token == {1000: pytest.approx(20.0), 32: pytest.approx(30.0)}
