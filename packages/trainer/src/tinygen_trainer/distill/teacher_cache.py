"""The teacher cache: a teacher's top-k next-token logits over blocks of a corpus, on disk.

Logit distillation needs the teacher's distribution at every position the
student trains on. Running the teacher is the slow part (SmolLM2-135M scores
about 450 tokens/s on two CPU cores), so it runs once, here, and every student
training reads the result.

A cache is a folder:

- cache.json: what it holds and what made it: teacher and tokenizer
  fingerprints, the corpus's token checksum, block_size, top_k, the seed that
  chose the blocks, num_blocks and blocks_per_shard;
- shard-00000.msgpack, ...: one msgpack map per shard of blocks_per_shard blocks,
  with the blocks' tokens (n, T) and, for each position, the teacher's top-k
  token ids (n, T, k) and logits (n, T, k float16), and a sha256 of the arrays.

Blocks are non-overlapping windows of the token stream, taken in a seeded
random order, so any prefix of the cache is a fair sample of the corpus.
Shards are written atomically in order; an interrupted pass (killed, or stopped
by `max_minutes`) continues when run again with the same arguments, redoing
every shard that is missing or fails its checksum (a file cut short or damaged
on disk), and a finished cache is reused by every student. Asking for
more (or fewer) blocks keeps every whole shard already scored.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack
import numpy as np

from tinygen.errors import TinygenError
from tinygen.atomic import atomic_write

from ..data.dataset import TokenDataset
from ..data.encoder import Encoder

MAGIC = "tinygen-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "cache.json"
LOGITS_DTYPE = np.dtype("<f2")  # top-k logits: float16 keeps 3 significant digits, half the bytes
TOKENS_DTYPE = np.dtype("<u4")
IDS_DTYPES = ("<u2", "<u4")  # top-k ids: uint16 while the vocabulary fits


class TeacherCacheError(TinygenError):
    """A teacher cache that is corrupt, incomplete, or made for other settings."""


def _corrupt_manifest(path: Path, why: str) -> TeacherCacheError:
    return TeacherCacheError(f"{path}: corrupt ({why}); delete {path.parent} and build it again")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TeacherBlocks:
    """Cached blocks as stored (compact): tokens (n, T) uint32, top-k ids (n, T, k) uint16 or
    uint32, top-k logits (n, T, k) float16, largest first."""

    tokens: np.ndarray
    ids: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class TeacherCache:
    """An open cache folder: its manifest and the shards written so far."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self._whole: set[int] = set()  # shards read and checked (or written) by this process

    @classmethod
    def open(cls, folder: str | Path) -> "TeacherCache":
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.exists():
            raise TeacherCacheError(f"{folder}: not found; build a teacher cache there with "
                                    f"'tinygen-train teacher-cache'")
        if not path.is_file():
            raise TeacherCacheError(f"{folder}: not a teacher cache (no {MANIFEST}); "
                                    f"build one with 'tinygen-train teacher-cache'")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TeacherCacheError(f"{path}: corrupt; delete {folder} and build it again") from None
        if not isinstance(manifest, dict):
            raise _corrupt_manifest(path, "not a JSON object")
        if manifest.get("magic") != MAGIC:
            raise TeacherCacheError(f"{folder}: not a teacher cache")
        version = manifest.get("format_version", 0)
        if not _is_int(version):
            raise _corrupt_manifest(path, f"format_version is {version!r}")
        if version > FORMAT_VERSION:
            raise TeacherCacheError(f"{folder}: teacher cache format {version} "
                                    f"is newer than this tinygen-trainer reads; upgrade it")
        # Checked here, so a damaged manifest is this one line, not a KeyError deep in training.
        for key in ("num_blocks", "block_size", "top_k", "blocks_per_shard"):
            value = manifest.get(key)
            if not (_is_int(value) and value >= 1):
                found = "missing" if value is None else repr(value)
                raise _corrupt_manifest(path, f"{key} is {found}, not an integer >= 1")
        if manifest.get("ids_dtype") not in IDS_DTYPES:
            raise _corrupt_manifest(path, f"ids_dtype is {manifest.get('ids_dtype')!r}, not one of "
                                          f"{', '.join(IDS_DTYPES)}")
        return cls(folder, manifest)

    # -- geometry ------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return int(self.manifest["num_blocks"])

    @property
    def block_size(self) -> int:
        return int(self.manifest["block_size"])

    @property
    def top_k(self) -> int:
        return int(self.manifest["top_k"])

    @property
    def num_shards(self) -> int:
        per = int(self.manifest["blocks_per_shard"])
        return (self.num_blocks + per - 1) // per

    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.msgpack"

    def shard_range(self, index: int) -> tuple[int, int]:
        per = int(self.manifest["blocks_per_shard"])
        return index * per, min((index + 1) * per, self.num_blocks)

    def shards_done(self) -> int:
        """How many shards, from the first, are on disk and whole. Each is read and checked:
        atomic writes keep out half-written files, not a copy cut short or a damaged disk."""
        done = 0
        while done < self.num_shards and self.shard_ok(done):
            done += 1
        return done

    def shards_on_disk(self) -> list[int]:
        """The indices of the shard files in the folder, whatever cache.json says."""
        found = []
        for path in self.folder.glob("shard-*.msgpack"):
            number = path.name[len("shard-"):-len(".msgpack")]
            if number.isdigit() and path.name == self.shard_path(int(number)).name:
                found.append(int(number))
        return sorted(found)

    def shard_ok(self, index: int) -> bool:
        """Whether shard `index` is on disk and whole; each is read once per process."""
        if index in self._whole:
            return True
        if not self.shard_path(index).is_file():
            return False
        try:
            self.read_shard(index)
        except TeacherCacheError:
            return False
        self._whole.add(index)
        return True

    @property
    def complete(self) -> bool:
        return self.shards_done() == self.num_shards

    # -- reading -------------------------------------------------------------

    def load(self) -> TeacherBlocks:
        """Every block, checked; an incomplete or damaged cache is a one-line error."""
        # Counted from the folder, not by asking for each of num_shards files: a cache.json
        # claiming 1e12 blocks took hours to count.
        present = [i for i in self.shards_on_disk() if i < self.num_shards]
        done = len(present)
        if done < self.num_shards:
            if present:  # the last shard written says whether cache.json's count is its own
                self.read_shard(max(present))
            raise TeacherCacheError(
                f"{self.folder}: teacher cache is incomplete ({done}/{self.num_shards} shards); "
                f"run the same 'tinygen-train teacher-cache' command again to finish it")
        parts = [self.read_shard(i) for i in range(self.num_shards)]  # each read once, checked
        return TeacherBlocks(*(np.concatenate([getattr(p, f) for p in parts])
                               for f in ("tokens", "ids", "logits")))

    def read_shard(self, index: int) -> TeacherBlocks:
        path = self.shard_path(index)
        try:
            shard = msgpack.unpackb(path.read_bytes(), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise self._corrupt(path, "it cannot be decoded") from None
        start, end = self.shard_range(index)
        n, t, k = end - start, self.block_size, self.top_k
        if not isinstance(shard, dict):  # valid msgpack, but not a map: no .get
            raise self._corrupt(path, "it is not this cache's shard")
        arrays = [shard.get(name) for name in ("tokens", "ids", "logits")]
        if shard.get("shard") != index or not all(isinstance(a, bytes) for a in arrays):
            raise self._corrupt(path, "it is not this cache's shard")
        digest = hashlib.sha256(b"".join(arrays)).hexdigest()
        if digest != shard.get("sha256"):
            raise self._corrupt(path, "its checksum does not match (damaged on disk?)")
        stored, row = divmod(len(arrays[0]), TOKENS_DTYPE.itemsize * t)
        if not row and stored != n:  # whole (its checksum holds), so cache.json is what is wrong
            raise TeacherCacheError(
                f"{self.folder / MANIFEST}: teacher cache is corrupt: it counts {n} blocks in "
                f"{path.name} (num_blocks {self.num_blocks}, blocks_per_shard "
                f"{self.manifest['blocks_per_shard']}), which holds {stored}; run the same "
                f"'tinygen-train teacher-cache' command again to repair it")
        ids_dtype = np.dtype(self.manifest["ids_dtype"])
        try:
            tokens = np.frombuffer(arrays[0], TOKENS_DTYPE).reshape(n, t)
            ids = np.frombuffer(arrays[1], ids_dtype).reshape(n, t, k)
            logits = np.frombuffer(arrays[2], LOGITS_DTYPE).reshape(n, t, k)
        except ValueError:
            raise self._corrupt(path, "its arrays do not match cache.json") from None
        return TeacherBlocks(tokens, ids, logits)

    def _corrupt(self, path: Path, why: str) -> TeacherCacheError:
        return TeacherCacheError(f"{path}: teacher cache shard is corrupt: {why}; run the same "
                                 f"'tinygen-train teacher-cache' command again to redo it")


# -- building ----------------------------------------------------------------

# A scorer maps (n, T) int64 token blocks to (top-k ids, top-k logits), each (n, T, k).
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def plan_blocks(dataset: TokenDataset, block_size: int, seed: int,
                num_blocks: int | None) -> np.ndarray:
    """Start offsets of the cached blocks: non-overlapping windows in a seeded random order."""
    windows = dataset.num_tokens // block_size
    if windows < 1:
        raise TinygenError(f"{dataset.name}: {dataset.num_tokens} tokens, fewer than block_size "
                           f"{block_size}; use a smaller --block-size or more text")
    if num_blocks is not None and num_blocks > windows:
        raise TinygenError(f"{dataset.name} has {windows} blocks of {block_size} tokens, "
                           f"fewer than --teacher-blocks {num_blocks}")
    order = np.random.default_rng(seed).permutation(windows)
    return order[:num_blocks or windows].astype(np.int64) * block_size


def build_teacher_cache(folder: str | Path, dataset: TokenDataset, encoder: Encoder,
                        teacher_id: str, score: Scorer, block_size: int, top_k: int,
                        seed: int, num_blocks: int | None = None, blocks_per_shard: int = 64,
                        batch_size: int = 4, max_minutes: float | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        resizable: bool = True) -> TeacherCache:
    """Score the planned blocks with `score`, continuing an interrupted cache at `folder`.

    `teacher_id` fingerprints the teacher (teacher_fingerprint()); a cache made by another
    teacher, tokenizer, corpus or settings is refused rather than mixed, and so is another
    `num_blocks` unless `resizable`. Returns the cache, complete unless `max_minutes` ran out
    first (run again to go on). `progress(done, total)` is called with the blocks already
    whole before any scoring (a resumed bar starts there), then after each batch.
    """
    folder = Path(folder)
    offsets = plan_blocks(dataset, block_size, seed, num_blocks)
    manifest = {
        "magic": MAGIC, "format_version": FORMAT_VERSION,
        "teacher_sha256": teacher_id,
        **encoder.describe(),
        "corpus_tokens_sha256": hashlib.sha256(
            np.ascontiguousarray(dataset.tokens, TOKENS_DTYPE).tobytes()).hexdigest(),
        "block_size": block_size, "top_k": top_k, "seed": seed,
        "num_blocks": int(offsets.size), "blocks_per_shard": blocks_per_shard,
        "ids_dtype": IDS_DTYPES[0] if encoder.vocab_size <= 1 << 16 else IDS_DTYPES[1],
    }
    if (folder / MANIFEST).is_file():
        cache = TeacherCache.open(folder)
        changed = [k for k, v in manifest.items()
                   if cache.manifest.get(k) != v and k != "num_blocks"]
        if changed:
            raise TeacherCacheError(
                f"{folder} holds a teacher cache made with other settings ({', '.join(changed)}); "
                f"use another folder, or delete it to rebuild")
        if cache.num_blocks != manifest["num_blocks"] and not resizable:
            # Checked before any scoring: resized, the cache is no longer the run's rows.
            raise TeacherCacheError(f"{folder} holds the {cache.num_blocks} blocks a run trained "
                                    f"on; resume it with --teacher-blocks {cache.num_blocks}")
        if cache.num_blocks != manifest["num_blocks"]:
            cache = _resize(cache, manifest)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        _write_manifest(folder, manifest)
        cache = TeacherCache(folder, manifest)

    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    ids_dtype = np.dtype(manifest["ids_dtype"])
    done = sum(end - start for start, end in
               (cache.shard_range(i) for i in range(cache.num_shards) if cache.shard_ok(i)))
    if progress is not None:
        progress(done, cache.num_blocks)
    for index in range(cache.num_shards):
        if cache.shard_ok(index):
            continue
        if deadline is not None and time.monotonic() > deadline:
            break
        start, end = cache.shard_range(index)
        positions = offsets[start:end, None] + np.arange(block_size)[None, :]
        tokens = dataset.tokens[positions].astype(np.int64)
        ids, logits = [], []
        for b in range(0, len(tokens), batch_size):
            top_ids, top_logits = score(tokens[b:b + batch_size])
            ids.append(top_ids)
            logits.append(top_logits)
            done += len(top_ids)  # a count, not a position: a redone middle shard ends at total
            if progress is not None:
                progress(done, cache.num_blocks)
        arrays = [np.ascontiguousarray(tokens, TOKENS_DTYPE).tobytes(),
                  np.ascontiguousarray(np.concatenate(ids), ids_dtype).tobytes(),
                  np.ascontiguousarray(np.concatenate(logits), LOGITS_DTYPE).tobytes()]
        shard = {"shard": index, "tokens": arrays[0], "ids": arrays[1], "logits": arrays[2],
                 "sha256": hashlib.sha256(b"".join(arrays)).hexdigest()}
        packed = msgpack.packb(shard, use_bin_type=True)
        atomic_write(cache.shard_path(index), lambda f: f.write(packed))
        cache._whole.add(index)
    return cache


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write(folder / MANIFEST,
                 lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))


def _resize(cache: TeacherCache, manifest: dict[str, Any]) -> TeacherCache:
    """Grow or shrink a cache: blocks are a seeded order's prefix, so whole shards stay valid.

    Shards that the new size cuts (or that held a shorter last shard) go first, then
    the manifest changes, so an interruption in between leaves a consistent cache.
    """
    resized = TeacherCache(cache.folder, manifest)
    for index in cache.shards_on_disk():  # not range(num_shards): a corrupt count may be 1e12
        keep = (index < min(cache.num_shards, resized.num_shards)
                and cache.shard_range(index) == resized.shard_range(index))
        if not keep:
            cache.shard_path(index).unlink(missing_ok=True)
    _write_manifest(cache.folder, manifest)
    return resized


def teacher_fingerprint(teacher_dir: Path) -> str:
    """sha256 over the teacher's config and weight files: a changed teacher is a new cache."""
    digest = hashlib.sha256()
    files = sorted(p for p in teacher_dir.iterdir()
                   if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


def torch_scorer(model, top_k: int) -> Scorer:
    """A scorer running a transformers causal LM (on its device) and keeping the top k logits."""
    import torch

    device = next(model.parameters()).device

    def score(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits = model(input_ids=torch.from_numpy(tokens).to(device), use_cache=False).logits
            values, ids = logits.float().topk(top_k, dim=-1)  # sorted, largest first
        return ids.cpu().numpy(), values.cpu().numpy()

    return score
