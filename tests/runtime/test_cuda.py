"""The runtime on onnxruntime's CUDA execution provider: the fused float16 graph with its KV
buffers in GPU memory (IO binding, updated in place), against the same model on the CPU.

The GPU tests run only where onnxruntime-gpu sees a GPU (CI has none: skipped there); on a
GPU machine, `python -m pytest tests/runtime/test_cuda.py`. The device choice and the chunks' cache
lifetimes are checked everywhere.
"""

import numpy as np
import onnxruntime as ort
import pytest

from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen.manifest import load_manifest
from tinygen.onnx_model import load_causal_lm
from generation_checks import PROMPTS, assert_batch_is_alone_and_seeds_repeat

needs_cuda = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                reason="needs onnxruntime-gpu and a CUDA GPU")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def fp16_dir(request, tiny_gpt2_dir, tiny_llama_dir, tmp_path_factory):
    from tinygen_trainer.export import export_model

    src = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[request.param]
    return export_model(src, tmp_path_factory.mktemp("cuda") / request.param, dtype="float16")


@pytest.fixture(scope="module")
def gen(fp16_dir):
    generator = TextGenerator(fp16_dir, device="cuda")
    assert generator.model.session.get_providers()[0] == "CUDAExecutionProvider"
    return generator


def _prompt_logits(model_dir, device, ids):
    lm = load_causal_lm(model_dir, load_manifest(model_dir), device=device)
    logits, cache = lm.forward(np.array([ids]), np.ones((1, len(ids)), np.int64),
                               np.arange(len(ids))[None], lm.empty_cache(1))
    return logits[0, -1].copy(), cache


@needs_cuda
def test_the_kv_buffers_live_on_the_gpu(fp16_dir):
    _, cache = _prompt_logits(fp16_dir, "cuda", list(range(3, 20)))
    assert cache.arrays is None  # no host copy to write into
    assert all(value.device_name().lower() == "cuda" for value in cache)


@needs_cuda
def test_gpu_logits_match_the_cpu_to_float16_precision(fp16_dir):
    ids = list(range(3, 40))
    gpu, _ = _prompt_logits(fp16_dir, "cuda", ids)
    cpu, _ = _prompt_logits(fp16_dir, "cpu", ids)
    assert np.abs(gpu - cpu).max() < 0.02 * np.abs(cpu).max()
    assert np.argmax(gpu) == np.argmax(cpu)


@needs_cuda
def test_a_batch_text_is_the_text_made_alone_and_seeds_repeat(gen):
    assert_batch_is_alone_and_seeds_repeat(gen)


@needs_cuda
def test_a_row_slides_past_the_window_on_the_gpu(gen):
    """Rows restart in device memory through the host (SharedKVCausalLM.restart_rows); the
    other rows' texts are still the ones made alone."""
    window = gen.manifest.context_window
    long = gen.tokenizer.encode("Once upon a time there was a dog. " * 60)[:window - 12]
    prompts = ["The dog", long]
    options = dict(max_new_tokens=window, stop_at_eos=False, do_sample=False)
    batch = gen.generate(prompts, **options)
    assert [len(t.token_ids) for t in batch] == [window, window]
    for prompt, text in zip(prompts, batch):
        [single] = gen.generate(prompt, **options)
        assert single.token_ids == text.token_ids


def _uncaptured(fp16_dir):
    """The same model on the GPU with CUDA graphs off."""
    plain = TextGenerator(fp16_dir, device="cuda", cuda_graphs=False)
    assert not plain.model.cuda_graphs
    return plain


@needs_cuda
def test_replayed_decode_steps_give_the_texts_of_uncaptured_ones(gen, fp16_dir):
    assert gen.model.cuda_graphs
    plain = _uncaptured(fp16_dir)
    for options in (dict(do_sample=False), dict(seed=5)):
        for _ in range(2):  # the second time replays the graph the first recorded
            assert gen.generate(PROMPTS, max_new_tokens=24, **options) == \
                plain.generate(PROMPTS, max_new_tokens=24, **options)


@needs_cuda
def test_a_cache_that_finds_its_graph_leased_runs_uncaptured_alike(gen):
    import gc

    held = gen.model.empty_cache(len(PROMPTS))
    assert held.graph is not None  # this batch size's graph buffers, leased to `held`
    busy = gen.generate(PROMPTS, do_sample=False, max_new_tokens=24)
    del held
    gc.collect()
    assert gen.model.empty_cache(len(PROMPTS)).graph is not None  # released, and free again
    assert gen.generate(PROMPTS, do_sample=False, max_new_tokens=24) == busy


@needs_cuda
def test_batch_sizes_past_the_recorded_few_run_uncaptured_alike(fp16_dir):
    from tinygen.cuda_graph import MAX_GRAPHS

    gen = TextGenerator(fp16_dir, device="cuda")
    plain = _uncaptured(fp16_dir)
    prompts = (PROMPTS * 3)[:MAX_GRAPHS + 2]
    for size in range(1, MAX_GRAPHS + 3):
        assert gen.generate(prompts[:size], do_sample=False, max_new_tokens=12) == \
            plain.generate(prompts[:size], do_sample=False, max_new_tokens=12)
    assert sorted(gen.model._graphs) == list(range(1, MAX_GRAPHS + 1))


@pytest.fixture
def cuda_listed(monkeypatch):
    """onnxruntime reports CUDA (as onnxruntime-gpu does), whether or not a GPU is here."""
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_auto_keeps_a_float32_fused_graph_on_the_cpu(exported_gpt2_dir, cuda_listed):
    """Its attention has no float32 CUDA kernel (a batch's texts went wrong on an H100)."""
    assert load_manifest(exported_gpt2_dir).kv_cache == "shared"
    assert TextGenerator(exported_gpt2_dir).model.device == "cpu"


def test_cuda_refuses_a_float32_fused_graph_in_one_line(exported_gpt2_dir, cuda_listed):
    with pytest.raises(TinygenError, match="float32.*export it with --dtype float16 for CUDA"):
        TextGenerator(exported_gpt2_dir, device="cuda")


def test_the_float16_graph_is_not_refused(fp16_dir, cuda_listed):
    from tinygen.onnx_model import resolve_device

    manifest = load_manifest(fp16_dir)
    assert resolve_device("auto", manifest) == resolve_device("cuda", manifest) == "cuda"


def test_each_chunk_of_a_generate_frees_its_cache_before_the_next_is_made(exported_gpt2_dir):
    """On a GPU a live cache holds its batch size's recorded step: a chunk made while the last
    one's cache still lived would run uncaptured (checked here on the CPU, by reference)."""
    import weakref

    gen = TextGenerator(exported_gpt2_dir, device="cpu")
    made, empty_cache = [], gen.model.empty_cache

    def recording(batch, **options):
        assert all(ref() is None for ref in made), "the last chunk's cache is still alive"
        cache = empty_cache(batch, **options)
        made.append(weakref.ref(cache))
        return cache

    gen.model.empty_cache = recording
    texts = gen.generate("Once upon a time", n=6, batch_size=2, seed=1, max_new_tokens=4)
    assert len(texts) == 6 and len(made) == 3


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_cuda_graphs_is_the_sessions_choice(fp16_dir, cuda_listed, monkeypatch, cuda_graphs):
    """TextGenerator(cuda_graphs=False) opens the CUDA session without graph capture (checked
    on the CPU by the providers the session is asked for; test_cuda's GPU tests run both)."""
    import tinygen.onnx_model as onnx_model

    asked = []

    def session(path, options, providers):
        asked.append(providers)
        raise RuntimeError("no GPU here")

    monkeypatch.setattr(onnx_model.ort, "InferenceSession", session)
    with pytest.raises(TinygenError, match="not a loadable ONNX model"):
        TextGenerator(fp16_dir, device="cuda", cuda_graphs=cuda_graphs)
    recording = [p for p in asked if isinstance(p[0], tuple) and p[0][1].get("enable_cuda_graph") == "1"]
    assert bool(recording) == cuda_graphs
    assert asked[-1] == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # the fallback


@needs_cuda
def test_threads_sharing_a_gpu_generator_get_the_texts_made_alone(gen):
    """A session that records CUDA graphs runs one thread at a time, and a graph's buffers
    are leased to one cache: texts made from 4 threads at once equal those made alone."""
    import threading

    jobs = [(PROMPTS[i % len(PROMPTS)], 100 + i) for i in range(8)]
    alone = {seed: str(gen.generate(p, seed=seed, max_new_tokens=24)[0]) for p, seed in jobs}
    together, errors = {}, []

    def work(part):
        try:
            for p, seed in part:
                together[seed] = str(gen.generate(p, seed=seed, max_new_tokens=24)[0])
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(jobs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and together == alone
