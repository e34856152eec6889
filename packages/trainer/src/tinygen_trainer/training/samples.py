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
    # As the corpus was encoded: no rule matches into a special token (a record's <|body|>).
    ids = encoder.prompt_ids(prompt) if prompt else []
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
    return prompt + sample_text(encoder, ids if prompt else [], out[0, len(ids):].tolist())


def sample_text(encoder: Encoder, context: list[int], new: list[int]) -> str:
    """The text of the generated ids `new` after the prompt's ids `context`, as a user reads a
    sample: a replacement token as the text replacements.json decodes it to (<|url|> as
    "<url>"), any other special token as itself, so a record's fields stay apart
    (<|title|>Rain<|body|>...), and the end of text as nothing.

    Decoded after the prompt and cut, as the runtime's stream does: a SentencePiece
    tokenizer drops the space before a text's first word, not before a continuation's."""
    def decode(ids: list[int]) -> str:
        return encoder.tokenizer.decode(ids, skip_special_tokens=False)

    new = [i for i in new if i != encoder.eos_id]
    before, whole = decode(context), decode(context + new)
    text = whole[len(before):] if context and whole.startswith(before) else decode(new)
    for token, shown in encoder.replacements.decode.items():
        text = text.replace(token, shown)
    return text
