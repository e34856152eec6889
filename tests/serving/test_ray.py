"""tinygen.ray on a local Ray cluster started here: texts equal TextGenerator.generate's, seed for seed."""

import socket
import sys

import pytest

ray = pytest.importorskip("ray")

import tinygen.ray as tray  # noqa: E402
from tinygen import PromptTooLong, TinygenError  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_the_runtime_imports_ray_only_when_asked():
    import subprocess

    code = "import sys, tinygen, tinygen.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_batch_generation_over_workers_keeps_every_seed(cluster, gpt2_gen, optimum_gpt2_dir):
    prompts = ["Once upon a time", "To be", "The quick brown fox"]
    texts = tray.generate(prompts, model=optimum_gpt2_dir, n=4, seed=70, num_workers=2, chunk_size=5,
                          batch_size=3, max_new_tokens=16, top_p=0.9)
    want = gpt2_gen.generate(prompts, n=4, seed=70, max_new_tokens=16, top_p=0.9)
    assert [t.seed for t in texts] == list(range(70, 82))
    assert [t.token_ids for t in texts] == [w.token_ids for w in want]
    assert [str(t) for t in texts] == [str(w) for w in want]
    assert [t.finish_reason for t in texts] == [w.finish_reason for w in want]


def test_greedy_and_drawn_seeds(cluster, gpt2_gen, optimum_gpt2_dir):
    [greedy] = tray.generate("To be", model=optimum_gpt2_dir, do_sample=False, max_new_tokens=8)
    assert greedy.seed is None
    assert greedy.token_ids == gpt2_gen.generate("To be", do_sample=False, max_new_tokens=8)[0].token_ids
    [drawn] = tray.generate("To be", model=optimum_gpt2_dir, max_new_tokens=8)
    assert drawn.token_ids == gpt2_gen.generate("To be", seed=drawn.seed, max_new_tokens=8)[0].token_ids


def test_numpy_counts_and_seeds_as_text_generator_takes_them(cluster, gpt2_gen, optimum_gpt2_dir):
    """A seed drawn from a numpy Generator is an np.int64: TextGenerator.generate takes it."""
    import numpy as np

    texts = tray.generate("To be", model=optimum_gpt2_dir, n=np.int64(2), seed=np.int64(70),
                          batch_size=np.int64(2), num_workers=np.int64(1), max_new_tokens=6)
    want = gpt2_gen.generate("To be", n=2, seed=70, max_new_tokens=6)
    assert [(t.seed, t.token_ids) for t in texts] == [(w.seed, w.token_ids) for w in want]
    [listed] = tray.generate("To be", model=optimum_gpt2_dir, seed=[np.int64(71)], max_new_tokens=6)
    assert listed.token_ids == want[1].token_ids


def test_context_conditions_every_text_as_text_generator_does(cluster, fields_model, optimum_gpt2_dir):
    from tinygen import TextGenerator

    options = dict(context={"title": "Rain"}, max_new_tokens=8)
    texts = tray.generate("It", model=fields_model, n=3, seed=4, num_workers=2, chunk_size=2,
                          batch_size=2, **options)
    want = TextGenerator(fields_model).generate("It", n=3, seed=4, **options)
    assert [(t.seed, t.token_ids, t.finish_reason) for t in texts] == \
        [(w.seed, w.token_ids, w.finish_reason) for w in want]
    # Refused in the driver, as TextGenerator refuses them.
    with pytest.raises(TinygenError, match="no fields.json"):
        tray.generate("It", model=optimum_gpt2_dir, **options)
    with pytest.raises(TinygenError, match="target needs a context"):
        tray.generate("It", model=fields_model, target="body")
    with pytest.raises(TinygenError, match="the prompt is the start of the target field: one string"):
        tray.generate(["It", "So"], model=fields_model, **options)


def test_bad_arguments_are_tinygen_errors(cluster, optimum_gpt2_dir):
    with pytest.raises(TinygenError, match="n must be"):
        tray.generate("Hi", model=optimum_gpt2_dir, n=0)
    with pytest.raises(TinygenError, match="model must be a model folder's path .* got an empty string"):
        tray.generate("Hi", model=" ")  # not "." (the current folder) as ".: no tinygen.json"
    with pytest.raises(TinygenError, match="unknown generation option 'tempreature'"):
        tray.generate("Hi", model=optimum_gpt2_dir, tempreature=1)
    for name, value in (("dedupe", 0.5), ("progress", True), ("dedupe_against", "x.tokens")):
        with pytest.raises(TinygenError, match=f"tinygen.ray.generate takes no {name} \\(TextGenerator"):
            tray.generate("Hi", model=optimum_gpt2_dir, **{name: value})
    # checked in the driver, before an actor starts (from an actor they come as a RayTaskError)
    with pytest.raises(TinygenError, match="token id 99999 is outside the vocabulary") as refused:
        tray.generate([5, 99999], model=optimum_gpt2_dir)
    assert not isinstance(refused.value, ray.exceptions.RayTaskError)
    with pytest.raises(PromptTooLong, match="the model's window is") as refused:
        tray.generate(["Hi", "word " * 5000], model=optimum_gpt2_dir)
    assert not isinstance(refused.value, ray.exceptions.RayTaskError)
    for name, value in (("chunk_size", 0), ("batch_size", True)):
        with pytest.raises(TinygenError, match=f"{name} must be an integer >= 1"):
            tray.generate("Hi", model=optimum_gpt2_dir, **{name: value})
    # What an actor's generate refuses comes back as its one line, not a RayTaskError.
    with pytest.raises(TinygenError) as refused:
        tray.generate("Hi", model=optimum_gpt2_dir, n=2, exclude_ids=[10**9])
    assert not isinstance(refused.value, ray.exceptions.RayTaskError)
    assert str(refused.value).startswith("exclude_ids: token id 1000000000 is outside")
    # What each actor's TextGenerator would refuse, as an ActorDiedError of twenty lines.
    for options, message in (({"device": "gpu"}, "unknown device 'gpu'; choose one of: auto, cpu, cuda"),
                             ({"threads": 0}, "threads must be an integer >= 1, got 0"),
                             ({"cpus_per_worker": -1}, "cpus_per_worker must be a number > 0, got -1"),
                             ({"cpus_per_worker": "1"}, "cpus_per_worker must be a number > 0")):
        with pytest.raises(TinygenError, match=message):
            tray.generate("Hi", model=optimum_gpt2_dir, **options)


def test_a_bad_deployment_is_refused_when_built(tmp_path):
    """Not after serve.run, as a failed deployment whose cause is in the controller's log."""
    pytest.importorskip("ray.serve")
    with pytest.raises(TinygenError, match="model directory not found"):
        tray.deployment(tmp_path / "nonexistent")
    with pytest.raises(TinygenError, match="unknown device 'gpu'"):
        tray.deployment(device="gpu")
    with pytest.raises(TinygenError, match="model must be a model folder's path .* got an empty string"):
        tray.deployment("")
    with pytest.raises(TinygenError, match="settings must be a tinygen.serving.ServerSettings .*got dict"):
        tray.deployment(settings={"api_key": "k"})


def test_a_missing_ray_or_ray_serve_says_what_to_install(monkeypatch):
    """ray without its [serve] extra cannot import ray.serve: one line, not an ImportError."""
    monkeypatch.delattr(ray, "serve", raising=False)
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(TinygenError, match=r"^tinygen.ray.deployment needs Ray Serve: pip install 'ray\[serve\]'$"):
        tray.deployment()
    monkeypatch.setitem(sys.modules, "ray", None)
    for call in (tray.generate, tray.deployment):
        with pytest.raises(TinygenError, match=r"^tinygen.ray needs Ray: pip install ray "):
            call()


def test_the_serve_deployment_answers_the_openai_client(cluster, gpt2_gen, optimum_gpt2_dir):
    serve = pytest.importorskip("ray.serve")
    openai = pytest.importorskip("openai")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(tray.deployment(optimum_gpt2_dir), name="tinygen", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0,
                               timeout=300)  # Serve's first request is slow on a busy 2-core machine
        model = client.models.list().data[0].id
        reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, seed=8)
        assert reply.choices[0].text == str(gpt2_gen.generate("Once upon a time", seed=8, max_new_tokens=12)[0])
        stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, seed=8,
                                           stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices) == reply.choices[0].text
    finally:
        serve.shutdown()


def test_an_actor_runs_on_the_cpus_ray_gives_it_unless_told():
    from tinygen.ray import actor_threads

    assert actor_threads("cpu", None, 1) == 1
    assert actor_threads("cpu", None, 4) == 4
    assert actor_threads("cpu", None, 0.5) == 1  # a fraction of a CPU still needs a thread
    assert actor_threads("cpu", 3, 1) == 3  # asked for: kept
    assert actor_threads("cuda", None, 1) is None  # the GPU's provider: onnxruntime's default


class _Enough(Exception):
    """Raised by the fake pool once it has seen the chunks a test looks at."""


def _fake_ray(submitted: list, stop_after: int):
    """A Ray whose pool records each chunk (rows, seeds) handed to it, and stops after a few."""
    from types import SimpleNamespace

    class Pool:
        def __init__(self, actors):
            self.actors = actors

        def submit(self, fn, chunk):
            submitted.append(chunk)
            if len(submitted) == stop_after:
                raise _Enough

        def map(self, fn, chunks):  # as Ray's: submits every chunk first
            for chunk in chunks:
                self.submit(fn, chunk)

    class Worker:
        @staticmethod
        def remote(*args):
            return object()

    return SimpleNamespace(is_initialized=lambda: True, remote=lambda **_: lambda cls: Worker,
                           util=SimpleNamespace(ActorPool=Pool), kill=lambda actor: None)


def test_a_huge_n_hands_out_chunks_without_listing_every_row(optimum_gpt2_dir, monkeypatch):
    """n=10**12 built every row and seed on the driver before the first chunk went out (killed
    for memory); chunks are made as they are handed out, as TextGenerator.generate does."""
    import tracemalloc

    submitted = []
    monkeypatch.setattr(tray, "_ray", lambda: _fake_ray(submitted, stop_after=3))
    tracemalloc.start()
    try:
        with pytest.raises(_Enough):  # 10**6 rows listed up front take tens of MB
            tray.generate(["A", "B"], model=optimum_gpt2_dir, n=10**6, seed=5, chunk_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    submitted.clear()
    with pytest.raises(_Enough):
        tray.generate(["A", "B"], model=optimum_gpt2_dir, n=10**12, seed=5, chunk_size=4)
    assert [seeds for _, seeds in submitted] == [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    assert all(len(set(map(tuple, rows))) == 1 for rows, _ in submitted)  # all "A": n of it come first
