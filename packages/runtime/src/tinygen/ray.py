"""tinygen on a Ray cluster: batch generation over a pool of actors, and a Ray Serve deployment.

    import ray
    from tinygen.ray import generate
    ray.init()
    texts = generate("Once upon a time", model="my-model", n=1000, seed=7, num_workers=4)
    texts[17].seed   # 24: TextGenerator("my-model").generate("Once upon a time", seed=24) is this text

    from ray import serve
    from tinygen.ray import deployment
    serve.run(deployment("my-model", num_replicas=2), route_prefix="/")   # `tinygen serve` on Ray Serve

`generate` hands out chunks of sequences to a pool of actors, one TextGenerator per
actor (the model loads once per worker), and gives the texts back in order. Seeds are
chosen on the driver exactly as TextGenerator.generate chooses them (sequence i gets
seed + i), and a text does not depend on which worker or batch made it, so every text
equals the one TextGenerator.generate makes with its seed, past the model's window too
(a row slides on its own, where it would alone: decoding.py).

An actor pool rather than Ray Data: it needs only `ray` itself (no pandas or pyarrow),
and the work is already split by the seeds. `deployment` runs the same ASGI app as
`tinygen serve` (OpenAI API, websocket, playground) in each replica; it needs
`ray[serve]`. Ray is imported only when these functions run.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Sequence

from .config import GenerationConfig, is_number, plain
from .decoding import Completion, check_room
from .errors import TinygenError
from .fields import FieldSchema
from .generator import TextGenerator, _check_count, model_folder, with_context
from .manifest import load_manifest
from .onnx_model import check_device_name
from .prompts import Prompt, PromptEncoder, as_prompt


def _ray():
    try:
        import ray
    except ImportError:
        raise TinygenError("tinygen.ray needs Ray: pip install ray (ray[serve] for the deployment)") from None
    return ray


class _Worker:
    """One actor: a TextGenerator, loaded once, generating the chunks it is given."""

    def __init__(self, model: str, device: str, threads: int | None):
        self.generator = TextGenerator(model, device=device, threads=threads)

    def generate(self, prompts: list, seeds: list, batch_size: int, options: dict) -> list[tuple]:
        if "context" in options:  # one prompt, the text's start: the generator writes the fields in
            texts = self.generator.generate(prompts[0], n=len(seeds), seed=seeds,
                                            batch_size=batch_size, **options)
        else:
            texts = self.generator.generate(prompts, n=1, seed=seeds, batch_size=batch_size, **options)
        # Plain tuples: Completion (a str subclass with extra fields) does not pickle as itself.
        return [(str(t), t.seed, t.token_ids, t.finish_reason, t.token_probs) for t in texts]


def generate(prompt: Prompt | Sequence[Prompt] = "", model: str | os.PathLike | None = None, n: int = 1,
             seed: int | Sequence[int] | None = None, num_workers: int = 2, batch_size: int = 16,
             chunk_size: int | None = None, device: str = "cpu", threads: int | None = None,
             cpus_per_worker: float = 1, context: dict | None = None, target: str | None = None,
             **options: Any) -> list[Completion]:
    """TextGenerator.generate over Ray: `n` texts per prompt, in prompt order.

    Needs a running Ray (ray.init()). num_workers actors each load the model (a path
    every node can read); chunk_size sequences (default batch_size) go to an actor at a
    time, decoded batch_size at once; options are GenerationConfig's. On the CPU each actor
    runs onnxruntime on `threads` threads, by default the CPUs Ray gives it
    (cpus_per_worker, at least 1). context and target condition a model trained on records
    with fields, as in TextGenerator.generate. Each result is a Completion whose `.seed`
    remakes it with TextGenerator alone.
    """
    ray = _ray()
    # numpy scalars (a seed from a Generator) as Python values, as TextGenerator.generate takes them
    n, seed, num_workers, batch_size, chunk_size, threads, cpus_per_worker = (plain(v) for v in (
        n, seed, num_workers, batch_size, chunk_size, threads, cpus_per_worker))
    if not ray.is_initialized():
        raise TinygenError("Ray is not running here: call ray.init() (or ray.init(address=...)) first")
    for name in ("progress", "dedupe", "dedupe_ngram", "dedupe_against"):
        if name in options:  # GenerationConfig would call it unknown, which TextGenerator knows
            raise TinygenError(f"tinygen.ray.generate takes no {name} (TextGenerator.generate's "
                               f"own, over one process's texts); leave it out")
    model_dir = os.fspath(model_folder(model))
    manifest = load_manifest(model_dir)
    config = GenerationConfig().merged(**manifest.generation).merged(**options)
    # Encoded here, so a bad prompt (too long, an id outside the vocabulary) is refused before
    # any actor starts, where it would come back as a RayTaskError; actors get token ids.
    fields = FieldSchema.load(Path(model_dir) / manifest.fields_file) \
        if context is not None and manifest.fields_file else None
    prompt = as_prompt(prompt)
    conditioned = with_context(prompt, context, target, fields, Path(model_dir))
    prompts = PromptEncoder.load(model_dir, manifest).encode(conditioned)
    check_room(config, prompts, manifest.context_window)
    for name, value in (("n", n), ("num_workers", num_workers), ("batch_size", batch_size),
                        ("chunk_size", batch_size if chunk_size is None else chunk_size)):
        _check_count(name, value)
    if not is_number(cpus_per_worker) or not cpus_per_worker > 0:
        raise TinygenError(f"cpus_per_worker must be a number > 0, got {cpus_per_worker!r}")
    _check_worker_options(device, threads)
    threads = actor_threads(device, threads, cpus_per_worker)
    total, size = len(prompts) * n, batch_size if chunk_size is None else chunk_size
    seeds = TextGenerator._seed_sequence(seed, total, config)
    # Chunks are made as they are handed out, as TextGenerator.generate makes its batches:
    # every row and seed listed up front (and ActorPool.map submits them all at once) did not
    # fit in memory for a huge n, before the first text.
    if context is not None:  # actors condition the prompt themselves, and end at a field token
        prompts, options = [prompt], {**options, "context": context, "target": target}
    chunks = (([prompts[i // n] for i in range(start, min(start + size, total))],
               seeds[start:start + size]) for start in range(0, total, size))
    worker = ray.remote(num_cpus=cpus_per_worker)(_Worker)
    workers = min(num_workers, -(-total // size))  # no more actors than chunks
    actors = [worker.remote(model_dir, device, threads) for _ in range(workers)]
    pool = ray.util.ActorPool(actors)

    def run(actor, chunk):
        return actor.generate.remote(*chunk, batch_size, options)

    results: list[Completion] = []
    try:
        # Two chunks an actor: results come back in order, and an actor done before the
        # oldest chunk finds the next one waiting.
        for chunk in itertools.islice(chunks, 2 * len(actors)):
            pool.submit(run, chunk)
        while pool.has_next():
            done = pool.get_next()
            chunk = next(chunks, None)
            if chunk is not None:
                pool.submit(run, chunk)
            results.extend(Completion(*fields) for fields in done)
    except Exception as exc:
        # What an actor's generator refused (an excluded id outside the vocabulary...): its one
        # line, not the RayTaskError with the actor's traceback around it.
        if isinstance(getattr(exc, "cause", None), TinygenError):
            raise TinygenError(str(exc.cause)) from None
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
    return results


def actor_threads(device: str, threads: int | None, cpus_per_worker: float) -> int | None:
    """An actor's onnxruntime threads: as given, else on the CPU the CPUs Ray reserved for
    it. Left to onnxruntime, every actor takes every core of its node: two actors on 2 cores
    ran 10-15% slower than with a thread each."""
    if threads is None and device == "cpu":
        return max(1, int(cpus_per_worker))
    return threads


def _check_worker_options(device: str, threads: int | None) -> None:
    """What each actor's TextGenerator would refuse, refused on the driver: in an actor it
    comes back as an ActorDiedError of twenty lines. Whether 'cuda' can run is the
    workers' to say (the driver may have no GPU)."""
    check_device_name(device)
    if threads is not None:
        _check_count("threads", threads)


class _ServeReplica:
    """One Ray Serve replica: the `tinygen serve` app over its own TextGenerator."""

    def __init__(self, model: str, settings, device: str, threads: int | None):
        from .serving.app import create_app

        self._app = create_app(TextGenerator(model, device=device, threads=threads), settings)

    def __serve_build_asgi_app__(self):
        return self._app


def deployment(model: str | os.PathLike | None = None, settings=None, device: str = "cpu",
               threads: int | None = None, name: str = "tinygen", **deployment_options: Any):
    """A Ray Serve application serving the model as `tinygen serve` does; pass it to serve.run.

    settings: a tinygen.serving.ServerSettings (limits, API key); deployment_options go
    to serve.deployment (num_replicas, ray_actor_options, ...). Each replica runs its
    own engine, with continuous batching inside it.
    """
    _ray()
    try:
        from ray import serve
    except ImportError:  # ray without the [serve] extra lacks its dependencies
        raise TinygenError("tinygen.ray.deployment needs Ray Serve: pip install 'ray[serve]'") from None

    from .serving.settings import ServerSettings

    model_dir = os.fspath(model_folder(model))
    load_manifest(model_dir)  # a bad folder: one line here, not a failed deployment later
    _check_worker_options(device, threads)
    if settings is not None and not isinstance(settings, ServerSettings):
        raise TinygenError(f"settings must be a tinygen.serving.ServerSettings (ServerSettings(api_key=..., "
                           f"max_batch=...)), got {type(settings).__name__}")
    settings = (settings or ServerSettings()).validated()
    app = serve.deployment(serve.ingress()(_ServeReplica), name=name, **deployment_options)
    return app.bind(model_dir, settings, device, threads)
