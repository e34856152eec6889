"""Verification: the exported model must decode like PyTorch before we write OUT.

PyTorch decodes a fixed prompt greedily with `model.generate` (KV cache on); the
exported model decodes the same prompt step by step, carrying its own KV cache
from one call to the next, as the runtime will. Tokens must be identical; the
largest absolute logit difference along the shared path is reported.

Strict for float32 exports (ONNX and TorchScript): a single different token
raises TinygenError. Informational for int8 and int4 (weights or KV buffers):
quantization legitimately moves logits by ~0.1 and so can flip a close argmax on a
real model, so the quantized graph is reported (tokens in agreement, max logit diff)
after its float32 source has passed the strict check; different tokens are never a
reason to fail. A NaN or inf logit always is, in any graph: rounding cannot produce
one, a broken quantizer (a NaN scale) can. PyTorch's own logits must be finite too,
or the source model is at fault, not the export. Fused graphs compute logits for
the last position only, so they are compared at the positions they return.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from tinygen.errors import TinygenError
from tinygen.manifest import Manifest

PROMPT = "Once upon a time"
STEPS = 32


@dataclass(frozen=True)
class Reference:
    """PyTorch's greedy path: `tokens` generated after `prompt_ids`.

    `logits` is (len(prompt_ids) + steps - 1, vocab): row i is the model's output
    at position i of prompt + tokens, i.e. the prediction of token i + 1.
    """

    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    logits: np.ndarray
    suppressed: tuple[int, ...]  # EOS ids, masked as generate's min_new_tokens does


@dataclass(frozen=True)
class VerifyReport:
    label: str  # "verified" for the strict check, "int8" for the informational one
    steps: int
    matched: int  # greedy tokens equal to PyTorch's before the first difference
    max_logit_diff: float  # over the positions where both saw the same tokens
    expected: int | None = None  # PyTorch's token at the first difference
    got: int | None = None  # the exported model's token there
    finite: bool = True  # every logit the exported model gave, shared path or not, is a number

    @property
    def exact(self) -> bool:
        return self.matched == self.steps

    def line(self) -> str:
        text = (f"{self.label}: {self.matched}/{self.steps} greedy tokens match PyTorch, "
                f"max |logit diff| {self.max_logit_diff:.1e}")
        if not self.exact:
            text += f" (token {self.matched}: PyTorch {self.expected}, exported {self.got})"
        return text

    def require_finite(self, what: str, hint: str) -> "VerifyReport":
        if not self.finite:
            raise TinygenError(f"verification failed: {what} gives non-finite logits (NaN or inf) "
                               f"where PyTorch's are finite; {hint}")
        return self

    def require_exact(self, what: str) -> "VerifyReport":
        self.require_finite(what, "a bug in the exporter, not in the model")
        if not self.exact:
            raise TinygenError(f"verification failed: {what} does not decode like PyTorch; "
                               f"{self.line().split(': ', 1)[1]}")
        return self


class Stepper(Protocol):
    """One forward pass of an exported model with KV cache (batch 1)."""

    def empty_past(self) -> list: ...

    def __call__(self, ids: Sequence[int], past: list, past_len: int) -> tuple[np.ndarray, list]:
        """Logits (k, vocab) as float32 numpy for the last k positions of `ids` (k = len(ids),
        or 1 for graphs that compute only the last position), and the grown cache."""


def prompt_ids(tokenizer_file: Path, manifest: Manifest) -> list[int]:
    from .assets import load_tokenizer

    ids = load_tokenizer(tokenizer_file).encode(PROMPT).ids
    if not ids:  # a tokenizer with no pieces for this text: start from BOS
        ids = [manifest.bos_token_id or 0]
    bad = [i for i in ids if not 0 <= i < manifest.vocab_size]
    if bad:
        raise TinygenError(f"{tokenizer_file}: token id {bad[0]} is outside the model's "
                           f"vocabulary of {manifest.vocab_size}; the tokenizer does not fit "
                           f"the model")
    return ids


def torch_reference(model, ids: list[int], manifest: Manifest, steps: int = STEPS) -> Reference:
    import torch
    from transformers import GenerationConfig

    steps = max(1, min(steps, manifest.context_window - len(ids)))
    eos = list(manifest.eos_token_ids)
    pad = manifest.pad_token_id if manifest.pad_token_id is not None else (eos or [0])[0]
    # A clean config: only min_new_tokens' EOS mask, never the sampling or
    # penalty defaults a model's generation_config.json may carry.
    config = GenerationConfig(
        do_sample=False, max_new_tokens=steps, min_new_tokens=steps, use_cache=True,
        eos_token_id=eos or None,
        pad_token_id=pad,
    )
    input_ids = torch.tensor([ids])
    # transformers 4.5x merges the model's defaults into `config` unless told not to;
    # 5.x has no such flag and rejects it.
    clean = {"use_model_defaults": False} \
        if "use_model_defaults" in inspect.signature(model.generate).parameters else {}
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             generation_config=config, **clean)
        logits = model(out).logits[0, :-1].float().numpy()
    if not np.isfinite(logits).all():  # else a broken source would read as a broken export
        raise TinygenError("PyTorch's own logits are NaN or inf: the source model's weights are "
                           "broken (a diverged training run?); export an earlier checkpoint")
    tokens = tuple(out[0, len(ids):].tolist())
    if len(tokens) != steps:
        raise RuntimeError(f"generate returned {len(tokens)} tokens, asked for {steps}")
    return Reference(tuple(ids), tokens, logits, tuple(eos))


def greedy_path(step: Stepper, ref: Reference) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Decode the reference's prompt greedily.

    Returns the tokens, the logits the model gave, and for each logits row its
    position (the row of Reference.logits it is to be compared with).
    """
    past, past_len, feed = step.empty_past(), 0, list(ref.prompt_ids)
    tokens, rows, positions = [], [], []
    for _ in range(len(ref.tokens)):
        logits, past = step(feed, past, past_len)
        past_len += len(feed)
        rows.append(logits)
        positions.extend(range(past_len - len(logits), past_len))
        scores = logits[-1].copy()
        scores[list(ref.suppressed)] = -np.inf
        tokens.append(int(scores.argmax()))
        feed = [tokens[-1]]
    return tokens, np.concatenate(rows), np.array(positions)


def compare(label: str, ref: Reference, tokens: list[int], logits: np.ndarray,
            positions: np.ndarray | None = None) -> VerifyReport:
    """`positions`: the Reference.logits row of each logits row (default: all rows, in order)."""
    differ = [i for i, (a, b) in enumerate(zip(ref.tokens, tokens)) if a != b]
    matched = differ[0] if differ else len(ref.tokens)
    if positions is None:
        positions = np.arange(len(logits))
    # Rows up to the one predicting the first different token saw identical inputs.
    shared = positions < len(ref.prompt_ids) + matched
    diff = float(np.abs(logits[shared] - ref.logits[positions[shared]]).max())
    # All rows: a NaN after the first different token is as broken as one before it.
    finite = bool(np.isfinite(logits).all())
    if matched == len(ref.tokens):
        return VerifyReport(label, len(ref.tokens), matched, diff, finite=finite)
    return VerifyReport(label, len(ref.tokens), matched, diff, ref.tokens[matched],
                        tokens[matched], finite)


# -- the exported formats ------------------------------------------------------

class OnnxStepper:
    """The runtime's own session wrapper (IO binding, KV cache kept in onnxruntime),
    chosen as the runtime chooses it (`load_causal_lm`: concat or shared KV cache),
    so verification checks exactly what users will run."""

    def __init__(self, path: Path, manifest: Manifest):
        from dataclasses import replace

        from tinygen.onnx_model import load_causal_lm

        self.lm = load_causal_lm(path.parent, replace(manifest, model_file=path.name), device="cpu")

    def empty_past(self) -> list:
        return self.lm.empty_cache(1)

    def __call__(self, ids, past, past_len):
        n = len(ids)
        logits, present = self.lm.forward(
            np.array([ids], np.int64), np.ones((1, past_len + n), np.int64),
            np.arange(past_len, past_len + n, dtype=np.int64)[None], past)
        # A fused graph returns only the last position, in a buffer its next step reuses.
        return logits[0].copy(), present


class TorchScriptStepper:
    def __init__(self, path: Path, manifest: Manifest):
        import torch

        self.torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.m = manifest

    def empty_past(self) -> list:
        shape = (1, self.m.num_kv_heads, 0, self.m.head_size)
        return [self.torch.zeros(shape) for _ in self.m.past_names()]

    def __call__(self, ids, past, past_len):
        torch = self.torch
        n = len(ids)
        with torch.no_grad():
            logits, *present = self.module(
                torch.tensor([ids]), torch.ones(1, past_len + n, dtype=torch.long),
                torch.arange(past_len, past_len + n)[None], *past)
        return logits[0].float().numpy(), present


def verify_model(step: Stepper, ref: Reference, label: str = "verified") -> VerifyReport:
    tokens, logits, positions = greedy_path(step, ref)
    return compare(label, ref, tokens, logits, positions)
