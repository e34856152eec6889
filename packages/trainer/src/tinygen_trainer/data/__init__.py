"""Corpora to tokens to training rows.

sources (files -> documents), encoder (documents -> token stream), token_cache
(the stream on disk), dataset (stream -> rows: random windows or line by line),
blend (several corpora mixed by ratio).
"""

from .blend import BlendSampler, derive_seed
from .dataset import IGNORE_INDEX, RecordSampler, Rows, Sampler, TokenDataset, WindowSampler
from .encoder import Encoder, load_tokenizer
from .sources import read_documents
from tinygen.token_cache import TokenCacheError, is_token_cache, load_token_cache, save_token_cache

__all__ = [
    "IGNORE_INDEX", "BlendSampler", "Encoder", "RecordSampler", "Rows", "Sampler",
    "TokenCacheError", "TokenDataset", "WindowSampler", "derive_seed", "is_token_cache",
    "load_token_cache", "load_tokenizer", "read_documents", "save_token_cache",
]
