"""A text sample from the model being trained, to see what it has learned so far."""

from __future__ import annotations

import torch

from ..data.encoder import Encoder
from .device import Backend

TOP_K = 40


def generate_sample(model: torch.nn.Module, encoder: Encoder, backend: Backend, prompt: str,
                    length: int, window: int) -> str:
    """Up to `length` sampled tokens after `prompt` (after EOS, a document start, when empty).

    `window` is the model's context window; a longer prompt keeps only its end.

    Runs under fork_rng so drawing a sample does not change the training run.
    """
    ids = encoder.tokenizer.encode(encoder.replacements.apply_encode(prompt)).ids if prompt else []
    ids = (ids or [encoder.eos_id])[-window + 1:]
    length = min(length, window - len(ids))  # GPT-2 has no positions past its window
    input_ids = backend.to_device(torch.tensor([ids], dtype=torch.long))
    was_training = model.training
    model.eval()
    try:
        with backend.fork_rng(), torch.no_grad(), backend.autocast():
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                 max_new_tokens=length, do_sample=True, top_k=TOP_K,
                                 pad_token_id=encoder.eos_id)
    finally:
        model.train(was_training)
    return prompt + encoder.tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
